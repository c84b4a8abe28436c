"""Benchmark: scikit-learn models behind jetserve's `/v2/models/{name}/infer` (bridge ->
JetStream -> worker process) against KServe's own `ModelServer` serving the same files
in-process, at the same concurrency, in alternating rounds.

    JETSERVE_KSERVE_PYTHON=/tmp/kserve-0.21/bin/python \\
        python -m loadtest.kserve_bench [--connections 64] [--duration-s 5] [--rounds 7]

KServe is not a jetserve dependency: install it in an environment of its own
(`python -m venv /tmp/kserve-0.21 && /tmp/kserve-0.21/bin/pip install kserve==0.21.0
scikit-learn joblib`) and name its Python with `--kserve-python` or `JETSERVE_KSERVE_PYTHON`.
`loadtest/kserve_model_server.py` runs there (KServe's sklearnserver's predict).

Two models, both answering one iris row (V2 JSON, FP64 [1, 4]) with `predict_proba`:
- `lr`: a logistic regression; jetserve with `max_batch_size = 1` (no dynamic batching, one
  model call per request, as KServe's ModelServer does);
- `rf`: a 100-tree random forest (a model call costs about the same for 1 row or 32: batch
  friendly); jetserve with `max_batch_size = 32`, `max_batch_wait_ms = 5`.
Then 64 concurrent single-row requests to an `rf` worker run in this process, its model
calls counted. Needs `wrk`. Every process runs with one BLAS/OpenMP thread; KServe with one
worker process and its per-request log lines off (jetserve logs warnings only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from jetserve.servers import free_port
from loadtest.common import REPO, nats_server, spawn, wrk_parser
from loadtest.common import bridge as start_bridge
from loadtest.http_bridge import _wait_http, nats_server_pid, wrk

KSERVE_PYTHON = "JETSERVE_KSERVE_PYTHON"
BATCH = 32
#: The rf model's max_batch_wait_ms.
WAIT_MS = 5.0
ROW = [5.1, 3.5, 1.4, 0.2]
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: A level-2 long string: the body's nested lists hold "]]".
_LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def v2_body(name: str) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [ROW]}
    return {"id": name, "inputs": [tensor]}


def make_models(folder: Path) -> dict[str, Path]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    paths = {"lr": folder / "lr.joblib", "rf": folder / "rf.joblib"}
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), paths["lr"])
    joblib.dump(RandomForestClassifier(100, max_depth=6, random_state=0).fit(x, y), paths["rf"])
    return paths


def models_file(folder: Path, paths: dict[str, Path]) -> Path:
    batch = {"lr": (1, 0.0), "rf": (BATCH, WAIT_MS)}
    text = "".join(
        f'[[models]]\nname = "{name}"\nengine = "sklearn"\npath = "{paths[name]}"\n'
        f'capacity = 128\n[models.options]\nmethod = "predict_proba"\n'
        f"max_batch_size = {batch[name][0]}\nmax_batch_wait_ms = {batch[name][1]}\n\n"
        for name in paths
    )
    path = folder / "models.toml"
    path.write_text(text)
    return path


async def burst(url: str, spec_file: Path) -> tuple[int, bool]:
    """64 concurrent single-row requests to an `rf` worker run here: (model calls, every
    answer its own row's)."""
    import httpx
    import joblib
    import msgspec
    import numpy as np

    from workers.config import WorkerConfig, find_model, load_models_file
    from workers.runtimes.base import TensorModel
    from workers.worker import Worker, build_backend

    spec = find_model(load_models_file(spec_file), "rf")
    spec = msgspec.structs.replace(spec, name="rf-counted")
    backend = build_backend(spec)
    model = backend.model  # type: ignore[attr-defined]
    assert isinstance(model, TensorModel)
    worker = Worker(spec, WorkerConfig(nats_url=os.environ[NATS_ENV]), backend)
    task = asyncio.create_task(worker.run())
    path = "/v2/models/rf-counted/infer"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for _ in range(100):  # until the worker's stream and consumer exist
                if (await http.post(path, json=v2_body("warm"))).status_code == 200:
                    break
                await asyncio.sleep(0.2)
        rows = np.random.default_rng(0).uniform(0, 7, size=(64, 4))
        tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP64"}
        bodies = [{"inputs": [{**tensor, "data": r.tolist()}]} for r in rows]
        before = model.calls
        answers = await _all_at_once(url, path, bodies)
        calls = model.calls - before
        want = joblib.load(str(spec.path)).predict_proba(rows)  # the library's own answer
        right = all(
            status == 200 and json.loads(a)["outputs"][0]["data"] == want[i].tolist()
            for i, (status, a) in enumerate(answers)
        )
        return calls, right
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def _all_at_once(url: str, path: str, bodies: list[Any]) -> list[tuple[int, bytes]]:
    """POST each body on a connection of its own, the connections opened first and the
    requests written back to back (an HTTP client's per-request work would spread them out
    over tens of milliseconds on this machine): (status, body) per request."""
    host, port = url.removeprefix("http://").split(":")
    conns = await asyncio.gather(*[asyncio.open_connection(host, int(port)) for _ in bodies])
    for (_, writer), body in zip(conns, bodies, strict=True):
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        content = await reader.readexactly(length)
        writer.close()
        return status, content

    return await asyncio.gather(*[answer(r, w) for r, w in conns])


NATS_ENV = "JETSERVE_NATS_URL"


def _paired(
    targets: dict[str, tuple[str, Path]], pids: dict[str, dict[str, int]], args: argparse.Namespace
) -> list[dict[str, dict[str, float]]]:
    """Rounds; in each every target once, the order of jetserve and KServe alternating."""
    rounds = []
    for i in range(args.rounds):
        names = list(targets)
        if i % 2:
            names.reverse()
        rounds.append(
            {
                n: wrk(targets[n][0], args.connections, args.duration_s, targets[n][1], pids[n])
                for n in names
            }
        )
    return rounds


def run(args: argparse.Namespace) -> dict[str, Any]:
    kserve_python = args.kserve_python or os.environ.get(KSERVE_PYTHON)
    if not kserve_python:
        sys.exit(f"name KServe's Python: --kserve-python or {KSERVE_PYTHON} (see the docstring)")
    os.environ.update(THREADS)
    result: dict[str, Any] = {}
    with nats_server() as url, tempfile.TemporaryDirectory(prefix="jetserve-kserve-") as tmp:
        folder = Path(tmp)
        paths = make_models(folder)
        spec_file = models_file(folder, paths)
        env = {NATS_ENV: url, "JETSERVE_LOG_LEVEL": "WARNING", **THREADS}
        os.environ[NATS_ENV] = url
        procs = {
            name: spawn(
                ["-m", "jetserve", "worker", "--model", name, "--models-file", str(spec_file)],
                env=env,
            )
            for name in paths
        }
        port, kport = free_port(), free_port()
        procs["bridge"] = start_bridge(port, {**env, "JETSERVE_AUTH": "off"})
        # One worker process as jetserve's; no log line per request (jetserve logs warnings only).
        kserve_args = [
            *("--http_port", str(kport), "--grpc_port", str(free_port()), "--workers", "1"),
            *("--enable_latency_logging", "false", "--configure_logging", "false"),
        ]
        procs["kserve"] = subprocess.Popen(
            [kserve_python, str(REPO / "loadtest" / "kserve_model_server.py"), *kserve_args],
            env={**os.environ, **THREADS, "MODELS": ",".join(f"{n}={p}" for n, p in paths.items())},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base, kbase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{kport}"
        try:
            targets: dict[str, tuple[str, Path]] = {}
            pids: dict[str, dict[str, int]] = {}
            nats_pid = nats_server_pid(url)
            for name in paths:
                body = json.dumps(v2_body(name))
                script = folder / f"{name}.lua"
                script.write_text(_LUA.format(body=body))
                for side, root in (("jetserve", base), ("kserve", kbase)):
                    target = f"{root}/v2/models/{name}/infer"
                    _wait_http(target, body.encode(), 120)
                    targets[f"{side}-{name}"] = (target, script)
                server = {"bridge": procs["bridge"].pid, "worker": procs[name].pid}
                if nats_pid is not None:
                    server["nats"] = nats_pid
                pids[f"jetserve-{name}"] = server
                pids[f"kserve-{name}"] = {"bridge": procs["kserve"].pid}
            for key, (target, script) in targets.items():
                wrk(target, args.connections, 2, script, pids[key])  # warm-up
            rounds = _paired(targets, pids, args)
            calls, right = asyncio.run(burst(base, spec_file))
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(30)
    print(
        f"KServe protocol benchmark: {cpu_model()}, {os.cpu_count()} CPUs, FP64 inputs, "
        f"1 BLAS/OpenMP thread per process, wrk -t1 -c{args.connections}, "
        f"{args.duration_s:g} s per run, {args.rounds} paired rounds (alternating order)"
    )
    for name in paths:
        ratios = [
            r[f"jetserve-{name}"]["req_per_s"] / r[f"kserve-{name}"]["req_per_s"] for r in rounds
        ]
        for side in ("jetserve", "kserve"):
            key = f"{side}-{name}"
            med = {k: statistics.median(r[key][k] for r in rounds) for k in rounds[0][key]}
            result[key] = med
            # CPU per request of each server process (jetserve: bridge, worker, nats-server).
            cpu = "  ".join(
                f"{k.removesuffix('_cpu_us_per_req')} {v:4.0f}"
                for k, v in med.items()
                if k.endswith("_cpu_us_per_req")
            )
            print(
                f"  {key:14s} {med['req_per_s']:8.0f} req/s  p50 {med['p50_ms']:7.2f} ms  "
                f"p99 {med['p99_ms']:7.2f} ms  CPU us/req: {cpu}"
            )
        result[f"ratio_{name}"] = statistics.median(ratios)
        result[f"ratio_{name}_rounds"] = ratios
        goal = 1.5 if name == "lr" else 2.0
        print(
            f"  ratio jetserve / KServe ({name}): median {statistics.median(ratios):.2f}, "
            f"rounds {min(ratios):.2f}-{max(ratios):.2f} (target >= {goal})"
        )
    limit = math.ceil(64 / BATCH) + 1
    result["burst_model_calls"] = calls
    result["burst_answers_right"] = right
    print(
        f"  64 concurrent single-row requests (rf, max_batch_size {BATCH}): {calls} model calls "
        f"(target <= {limit}), every answer its own row's: {right}"
    )
    return result


def main() -> None:
    parser = wrk_parser(__doc__)
    parser.add_argument("--kserve-python", help=f"default: ${KSERVE_PYTHON}")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
