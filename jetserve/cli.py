"""`jetserve` command line. Each subcommand imports what it needs when it runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.toml")


def _models_file(args: argparse.Namespace) -> Path:
    value = args.models_file or os.environ.get("JETSERVE_MODELS_FILE")
    return Path(value) if value else DEFAULT_MODELS_FILE


def cmd_up(args: argparse.Namespace) -> int:
    from jetserve.stack import StackOptions, run_stack

    options = StackOptions.from_env(
        os.environ, models_file=_models_file(args), data_dir=args.data_dir, workers=args.workers
    )
    return run_stack(options)


def cmd_worker(args: argparse.Namespace) -> int:
    from jetserve.heap import settle
    from workers.config import ModelSpec, find_model, load_models_file
    from workers.worker import main as worker_main

    if args.model_class:
        spec = ModelSpec(
            name=args.model,
            model_class=args.model_class,
            options=dict(_option(o) for o in args.option),
        )
    else:
        spec = find_model(load_models_file(_models_file(args)), args.model)
    ready_file = os.environ.get("JETSERVE_READY_FILE")

    def on_serving() -> None:
        # The loaded model and start-up objects out of the collector's sight, young
        # collections less often (as in the bridge; `jetserve/heap.py`).
        settle()
        if ready_file:  # `jetserve up` watches it (the model's state)
            Path(ready_file).touch()

    return worker_main(spec, os.environ, on_serving=on_serving)


def _option(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--option wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_provision(args: argparse.Namespace) -> int:
    import asyncio

    import nats

    from natsio.routes import provision_routes
    from workers.config import WorkerConfig, load_models_file, load_routes
    from workers.provision import provision_model
    from workers.worker import queue_settings

    config = WorkerConfig.from_env(os.environ)

    async def run() -> None:
        nc = await nats.connect(config.nats_url)
        js = nc.jetstream()
        path = _models_file(args)
        for spec in load_models_file(path):
            await provision_model(js, spec.name, queue_settings(config, spec))
            print(f"provisioned {spec.name}")
        for route in await provision_routes(nc, load_routes(path), config.queue.replicas):
            print(f"provisioned route {route.name}")
        await nc.close()

    asyncio.run(run())
    return 0


def cmd_k8s_render(args: argparse.Namespace) -> int:
    from jetserve.k8s import OVERLAYS, RenderOptions, render_file
    from jetserve.k8s_files import dump, overlay_image, write_dir

    image = args.image
    if image is None:
        # The overlay that includes the output folder names the image (its `images:`).
        out = Path(args.output) if args.output else None
        image = overlay_image(out.parent / "kustomization.yaml") if out else "jetserve"
    options = RenderOptions(
        overlay=OVERLAYS[args.overlay],
        namespace=args.namespace,
        nats_monitoring_endpoint=args.nats_monitoring_endpoint,
        nats_account=args.nats_account,
        drain_timeout_s=args.drain_timeout_s,
        image=image,
    )
    files = render_file(_models_file(args), options)
    if args.output is None:
        sys.stdout.write(dump(m for manifests in files.values() for m in manifests))
        return 0
    for path in write_dir(Path(args.output), files, options):
        print(path)
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from jetserve.bridge import main as bridge_main

    env = dict(os.environ)
    if args.port is not None:
        env["JETSERVE_HTTP_PORT"] = str(args.port)
    if args.host is not None:
        env["JETSERVE_HTTP_HOST"] = args.host
    return bridge_main(env)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from jetserve.scheduler import main as scheduler_main

    env = dict(os.environ)
    if args.metrics_port is not None:
        env["JETSERVE_SCHEDULER_METRICS_PORT"] = str(args.metrics_port)
    return scheduler_main(env)


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """`jetserve.<module>.<name>`, imported when the command runs (not at start: the CLI's
    other commands do not pay for its imports)."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"jetserve.{module}"), name)(args))

    return run


def _status(args: argparse.Namespace) -> int:
    from jetserve.status import cmd_status

    try:
        return cmd_status(args)
    except KeyboardInterrupt:
        return 0


def _wait(args: argparse.Namespace) -> int:
    from jetserve.wait_cli import cmd_wait

    return cmd_wait(args)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    if args.vision:
        from workers.engine.tiny_vision import make_tiny_vision_model

        print(make_tiny_vision_model(Path(args.folder), args.seed, args.size))
        return 0
    from workers.engine.tiny import make_tiny_model

    path = make_tiny_model(Path(args.folder), args.size, args.seed)
    print(path)
    return 0


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    module: str,
    prefix: str = "cmd_",
    *,
    nats_url: bool = False,
) -> Callable[[str, str], argparse.ArgumentParser]:
    """A command group: adds `name` and returns what adds its subcommands, each run by
    `jetserve.<module>.<prefix><subcommand>`. With `nats_url` (a group acting on a running
    stack over NATS) each subcommand takes --nats-url."""
    group = sub.add_parser(name, help=help_)
    subs = group.add_subparsers(dest=f"{name}_command", required=True)

    def add(command: str, command_help: str) -> argparse.ArgumentParser:
        p = subs.add_parser(command, help=command_help)
        p.set_defaults(func=_command(module, prefix + command))
        if nats_url:
            p.add_argument("--nats-url", help="default JETSERVE_NATS_URL, else the local stack's")
        return p

    return add


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetserve", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("JETSERVE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "run the local stack (NATS, Postgres, workers) in the foreground")
    p.add_argument("--models-file")
    p.add_argument("--data-dir", help="default .jetserve (JETSERVE_DATA_DIR)")
    p.add_argument("--workers", type=int, help="replicas per model (overrides the file)")

    p = add(
        "wait",
        _wait,
        "wait until every model of the running local stack has a live worker (exit 0), or "
        "exit 1 naming a model that failed or is still loading at the timeout",
    )
    p.add_argument("--data-dir", help="default .jetserve (JETSERVE_DATA_DIR)")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="give up on a model whose worker failed this many times in a row",
    )

    p = add(
        "status",
        _status,
        "per model workers, queues, in flight, oldest request, dead letters; batches; scheduler",
    )
    p.add_argument("--nats-url", help="default JETSERVE_NATS_URL, else the local stack's")
    p.add_argument("--database-url", help="default JETSERVE_DATABASE_URL, else the local stack's")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    p.add_argument("--interval-s", type=float, default=2.0)
    p.add_argument("--model", action="append", help="only this model (repeatable)")

    # One add_argument call per option, as argparse has it: the calls below look alike by
    # design, a table of options would read worse.
    p = add("worker", cmd_worker, "serve one model from its NATS stream")
    p.add_argument("--model", required=True)
    p.add_argument("--models-file")
    p.add_argument(
        "--class",
        dest="model_class",
        help="serve this SDK class (name or module:Class) without a models file",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, with --class (value parsed as JSON when it is JSON)",
    )

    p = add(
        "make-tiny-model",
        cmd_make_tiny_model,
        "write a small random Llama model + tokenizer to a folder (offline, seconds)",
    )
    p.add_argument("folder")
    p.add_argument(
        "--vision",
        action="store_true",
        help="a vision-language model + processor instead (Idefics3 / SmolVLM-style; "
        "tiny ~0.9 M, bench ~40 M)",
    )
    p.add_argument(
        "--size",
        choices=["tiny", "bench"],
        default="tiny",
        help="tiny: ~1 M parameters (tests); bench: ~35 M (benchmarks)",
    )
    p.add_argument("--seed", type=int, default=0)

    p = add("provision", cmd_provision, "create the streams and consumers of every model")
    p.add_argument("--models-file")

    k8s = sub.add_parser("k8s", help="Kubernetes manifests").add_subparsers(
        dest="k8s_command", required=True
    )
    p = k8s.add_parser(
        "render",
        help="per-model worker Deployments and KEDA ScaledObjects, from the models file",
    )
    p.set_defaults(func=cmd_k8s_render)
    p.add_argument("--models-file")
    p.add_argument("--overlay", choices=["dev", "prod"], default="prod")
    p.add_argument("-o", "--output", help="write a kustomize folder here (default: YAML on stdout)")
    p.add_argument("--namespace", default="jetserve")
    p.add_argument(
        "--nats-monitoring-endpoint",
        help="host:port of NATS monitoring for KEDA (default: the chart's headless Service)",
    )
    p.add_argument(
        "--nats-account",
        help="account of the streams for KEDA (default: dev $G, i.e. none; prod JETSERVE)",
    )
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=20.0,
        help="drain timeout of models whose entry sets none; the pod's grace period is the "
        "drain timeout plus the backend's stop time plus a margin",
    )
    p.add_argument(
        "--image",
        help="the image the overlay runs (part of the provisioning Job's name; default: the "
        "`images:` entry of the kustomization above the -o folder)",
    )
    p = add("bridge", cmd_bridge, "serve the OpenAI-compatible HTTP API (JETSERVE_HTTP_*)")
    p.add_argument("--host", help="default 127.0.0.1 (JETSERVE_HTTP_HOST)")
    p.add_argument("--port", type=int, help="default 8000 (JETSERVE_HTTP_PORT)")

    p = add(
        "scheduler",
        cmd_scheduler,
        "run the batch scheduler (one active replica, others stand by; JETSERVE_DATABASE_URL)",
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port"
    )

    batch_cmd = _group(
        sub, "batch", "batch jobs over the HTTP API (JETSERVE_URL, JETSERVE_API_KEY)", "batch_cli"
    )
    p = batch_cmd("submit", "upload a JSONL file and create a batch")
    p.add_argument("file", help="OpenAI batch JSONL: {custom_id, method, url, body} per line")
    p.add_argument("--model", help="set this model in every line's body")
    p.add_argument("--endpoint", default="/v1/chat/completions")
    p.add_argument("--completion-window", default="24h")
    p.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    p.add_argument("-o", "--output", help="with --wait: write the results here")
    p = batch_cmd("status", "show a batch")
    p.add_argument("batch_id")
    p.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    p = batch_cmd("results", "download a batch's output (and errors)")
    p.add_argument("batch_id")
    p.add_argument("-o", "--output", required=True, help="output JSONL file")
    p.add_argument("--errors", help="also write the error file here")
    p = batch_cmd("cancel", "cancel a batch")
    p.add_argument("batch_id")
    p = batch_cmd("list", "list recent batches")
    p.add_argument("--limit", type=int, default=20)

    keys_cmd = _group(sub, "keys", "API keys (in JETSERVE_DATABASE_URL)", "keys_cli", "cmd_keys_")
    p = keys_cmd("create", "create a key for a tenant; prints it once")
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", help="a note to recognise the key by")
    p = keys_cmd("list", "list keys (ids, tenants, prefixes; never the keys)")
    p.add_argument("--tenant")
    p = keys_cmd("revoke", "revoke a key by its id (key_...)")
    p.add_argument("key_id")

    from jetserve import tenants_cli

    tenants = sub.add_parser("tenants", help="tenant limits (in JETSERVE_DATABASE_URL)")
    tenants_cli.add_arguments(
        tenants.add_subparsers(dest="tenants_command", required=True),
        tenants_cli.cmd_set_limits,
        tenants_cli.cmd_clear_limits,
        tenants_cli.cmd_list,
    )

    dlq_cmd = _group(
        sub, "dlq", "dead letters: list, show, replay, purge", "dlq_cli", nats_url=True
    )
    p = dlq_cmd("list", "list dead letters (id, model, request id, attempts, error)")
    p.add_argument("--model")
    p.add_argument("--json", action="store_true")
    p = dlq_cmd("show", "one dead letter: the request, the error headers, the attempts")
    p.add_argument("id", type=int)
    p = dlq_cmd("replay", "publish dead letters again (new message id, fresh deadline)")
    p.add_argument("id", type=int, nargs="?")
    p.add_argument("--all", action="store_true")
    p.add_argument("--model")
    p = dlq_cmd("purge", "delete dead letters for good (of one model)")
    p.add_argument("--model")
    p.add_argument("--yes", action="store_true")

    routes_cmd = _group(
        sub, "routes", "served names -> weighted model versions (live)", "routes_cli", nats_url=True
    )
    p = routes_cmd("set", "set a served name's targets: NAME MODEL=WEIGHT ...")
    p.add_argument("name")
    p.add_argument("targets", nargs="+", metavar="MODEL=WEIGHT")
    p.add_argument("--shadow", metavar="MODEL=PERCENT", help="mirror PERCENT of the requests")
    p = routes_cmd("show", "list the routes")
    p.add_argument("--json", action="store_true")
    p = routes_cmd("promote", "all of NAME's traffic to MODEL (the others stay at weight 0)")
    p.add_argument("name")
    p.add_argument("model")
    p = routes_cmd("rollback", "NAME back to its route before the last change")
    p.add_argument("name")
    p = routes_cmd("delete", "remove a served name")
    p.add_argument("name")

    db_cmd = _group(sub, "db", "the Postgres store", "keys_cli", "cmd_db_")
    db_cmd("migrate", "apply pending schema migrations")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))
