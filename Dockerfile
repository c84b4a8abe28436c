# The one image every jetserve container runs on Kubernetes (workers, bridge, scheduler,
# provisioning Job); the manifests in k8s/ set each container's command.
#   docker build -t jetserve .                     # CPU build of torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t jetserve:cuda .
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY jetserve jetserve
COPY producer producer
COPY workers workers
COPY scheduler scheduler
COPY schemas schemas
COPY natsio natsio
RUN pip install . && useradd --uid 10001 --user-group --no-create-home jetserve
# The pods run as this user (runAsNonRoot in k8s/).
USER 10001:10001
CMD ["jetserve", "--help"]
