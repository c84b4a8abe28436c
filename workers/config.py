"""Worker settings (one `WorkerConfig` per process) and the models file.

The models file (TOML) is the one source of truth for what is served: `jetserve up` starts a
worker per entry, `jetserve k8s render` writes a Deployment and ScaledObject per entry.

    [[models]]
    name = "echo"
    engine = "sdk"            # "sdk": a Model class; "llm": the continuous-batching engine
    class = "echo"            # registered name or "package.module:Class" (engine = "sdk")
    capacity = 64             # requests in flight per replica
    inputs = ["text"]         # what chat messages may carry: "text", "image", "audio", "file"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schemas.content import DEFAULT_INPUTS, Input
from schemas.limits import LimitSettings
from schemas.messages import ModelName
from schemas.routes import InvalidRoute, Route, Shadow, Target, check_route
from schemas.settings import (
    DEFAULT_DUPLICATE_WINDOW_S,
    DEFAULT_NATS_URL,
    ConfigError,
    database_url,
    duplicate_window_s,
    get_float,
    get_int,
    nats_url,
)


class ModelSpec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"model_class": "class"}
):
    name: ModelName
    #: "sdk": a Model class; "llm": the continuous-batching engine; "sklearn", "xgboost",
    #: "lightgbm", "onnx", "hf-pipeline": a ready-made runtime for the model at `path`.
    engine: Literal["sdk", "llm", "sklearn", "xgboost", "lightgbm", "onnx", "hf-pipeline"] = "sdk"
    #: engine = "sdk": a registered model name or "package.module:Class".
    model_class: str = "echo"
    #: engine = "llm": a local Hugging Face model folder, or "builtin:smollm2" / "builtin:tiny";
    #: a runtime: the model file.
    path: str | None = None
    #: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: "auto" (bf16 where fast, else fp32), "float32", "bfloat16", "float16".
    dtype: str = "auto"
    #: Requests in flight per replica; None: the model's own default.
    capacity: Annotated[int, Meta(ge=1)] | None = None
    min_replicas: Annotated[int, Meta(ge=0)] = 0
    max_replicas: Annotated[int, Meta(ge=1)] = 4
    #: Replicas `jetserve up` starts locally.
    local_replicas: Annotated[int, Meta(ge=0)] = 1
    #: GPUs per replica in Kubernetes (0: CPU only; at most 1 until the engine shards).
    gpus: Annotated[int, Meta(ge=0)] = 0
    #: Kubernetes sizing of one replica (requests; the memory limit equals the request, and
    #: with GPUs the CPU limit too). None: by engine (sdk 0.5 cores / 1024 MiB, llm 2 / 4096).
    cpu_cores: Annotated[float, Meta(gt=0)] | None = None
    memory_mib: Annotated[int, Meta(ge=64)] | None = None
    #: The writable model cache a replica gets (converted weights, e.g. SmolLM2's 517 MB).
    model_cache_mib: Annotated[int, Meta(ge=16)] = 1024
    #: On scale-down: time to finish in-flight requests before handing the rest back. The
    #: pod's grace period is derived from it (jetserve/k8s.py). None: JETSERVE_DRAIN_TIMEOUT_S.
    drain_timeout_s: Annotated[float, Meta(ge=0)] | None = None
    #: Bytes the model's stream may hold (JetStream `max_bytes`): one model's backlog cannot
    #: fill the storage all models share. Publishes beyond it are refused. JetStream reserves
    #: it (times the replicas) from the servers' storage when the stream is made: the sum over
    #: all models must fit the NATS volumes.
    max_stream_mib: Annotated[int, Meta(ge=1)] = 256
    #: The kinds of input the model takes: "text", "image", "audio", "file". A chat content
    #: part of any other kind is refused (400, naming the part), never silently dropped.
    inputs: Annotated[list[Input], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_INPUTS)
    )
    #: Passed to the model class / engine.
    options: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Told it takes what it cannot read, the engine would answer as if none had been sent.
        # Images need a vision-language model: checked when it loads (workers/engine/build).
        if self.engine == "llm" and not set(self.inputs) <= {"text", "image"}:
            raise ValueError(f"model {self.name!r}: the llm engine takes text and images (inputs)")


class RouteSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A served name in the models file (schemas/routes.py):

    [[routes]]
    name = "chat"
    targets = { smollm2 = 90, smollm2-ft = 10 }
    shadow = { model = "smollm2-next", percent = 5 }   # optional
    """

    name: str
    targets: dict[str, int]
    shadow: Shadow | None = None

    def route(self) -> Route:
        targets = [Target(model, weight) for model, weight in self.targets.items()]
        return msgspec.convert(
            {"name": self.name, "targets": targets, "shadow": self.shadow},
            Route,
            from_attributes=True,
        )


class ModelsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    models: list[ModelSpec]
    routes: list[RouteSpec] = msgspec.field(default_factory=list)


def load_models_file(path: Path) -> list[ModelSpec]:
    try:
        raw = tomllib.loads(path.read_text())
        specs = msgspec.convert(raw, ModelsFile).models
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"models file {path}: {exc}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"models file {path}: duplicate model names in {names}")
    return specs


def load_routes(path: Path) -> list[Route]:
    """The file's routes, each checked against the file's models and its other routes."""
    try:
        parsed = msgspec.convert(tomllib.loads(path.read_text()), ModelsFile)
        routes = [spec.route() for spec in parsed.routes]
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"models file {path}: {exc}") from None
    models = {s.name for s in parsed.models}
    table = {r.name: r for r in routes}
    if len(table) != len(routes):
        raise ConfigError(f"models file {path}: duplicate route names")
    for route in routes:
        try:
            check_route(route, models, {n: r for n, r in table.items() if n != route.name})
        except InvalidRoute as exc:
            raise ConfigError(f"models file {path}: route {route.name!r}: {exc}") from None
    return routes


def find_model(specs: list[ModelSpec], name: str) -> ModelSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise ConfigError(f"model {name!r} is not in the models file ({[s.name for s in specs]})")


@dataclass(frozen=True)
class QueueSettings:
    """A model's stream and consumers, as workers/provision.py makes them."""

    #: Messages a model's stream holds before publishes are refused (the backlog bound).
    max_backlog: int = 100_000
    max_msg_bytes: int = 1024 * 1024
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    #: JetStream redelivers a message this long after its last ack/in-progress signal: what a
    #: dead worker's requests wait before another worker gets them. Work in flight is kept
    #: alive by an in-progress signal every third of it (one small publish per message a
    #: second, only for messages held longer than that).
    ack_wait_s: float = 3.0
    #: Deliveries that may run the model; the server allows one more, which dead-letters,
    #: and `MAX_HANDBACKS` + `MAX_CRASH_DELIVERIES` more that do not count
    #: (workers/handbacks.py).
    max_attempts: int = 3
    replicas: int = 1
    #: Bytes the stream holds at most (publishes beyond are refused); -1: no limit. Per
    #: model: the models file's `max_stream_mib`.
    max_bytes: int = -1


@dataclass(frozen=True)
class WorkerConfig:
    nats_url: str = DEFAULT_NATS_URL
    queue: QueueSettings = field(default_factory=QueueSettings)
    #: On SIGTERM: time to finish in-flight work before handing the rest back. Keep it below
    #: the pod's terminationGracePeriodSeconds.
    drain_timeout_s: float = 20.0
    #: Pull credit kept waiting on the online consumer while it is idle, so an online request
    #: never waits behind batch pulls; None: a quarter of the capacity.
    online_reserve: int | None = None
    #: Pull credit always kept on the priority consumer (at least 1): what online work may
    #: not hold, so a priority request is delivered at once. Its requests run first.
    priority_reserve: int = 1
    #: Port for /metrics, /healthz, /readyz (workers/probes.py); 0: a free port; -1: none.
    metrics_port: int = -1
    #: Port on 127.0.0.1 that also serves /drain (the preStop hook, run inside the pod);
    #: -1: none (SIGTERM drains all the same).
    drain_port: int = -1
    #: How often the worker reads its consumers' info for the queue-depth gauges.
    queue_poll_s: float = 5.0
    #: Tenants' limits on requests they publish on their own subjects (`direct_limits.py`),
    #: read from this database (None: only `limits.defaults` apply).
    database_url: str | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerConfig:
        reserve = get_int(env, "JETSERVE_ONLINE_RESERVE", -1)
        return cls(
            nats_url=nats_url(env),
            queue=QueueSettings(
                max_backlog=get_int(env, "JETSERVE_MAX_BACKLOG", 100_000, minimum=1),
                max_msg_bytes=get_int(env, "JETSERVE_MAX_MSG_BYTES", 1024 * 1024, minimum=1024),
                duplicate_window_s=duplicate_window_s(env),
                ack_wait_s=get_float(env, "JETSERVE_ACK_WAIT_S", 3.0, minimum=0.5),
                max_attempts=get_int(env, "JETSERVE_MAX_ATTEMPTS", 3, minimum=1),
                replicas=get_int(env, "JETSERVE_STREAM_REPLICAS", 1, minimum=1),
            ),
            drain_timeout_s=get_float(env, "JETSERVE_DRAIN_TIMEOUT_S", 20.0, minimum=0.0),
            online_reserve=None if reserve < 0 else reserve,
            priority_reserve=get_int(env, "JETSERVE_PRIORITY_RESERVE", 1, minimum=1),
            metrics_port=get_int(env, "JETSERVE_WORKER_METRICS_PORT", -1, minimum=-1),
            drain_port=get_int(env, "JETSERVE_WORKER_DRAIN_PORT", -1, minimum=-1),
            queue_poll_s=get_float(env, "JETSERVE_QUEUE_POLL_S", 5.0, minimum=0.1),
            database_url=database_url(env),
            limits=LimitSettings.from_env(env),
        )
