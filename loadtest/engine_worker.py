"""The full worker path for `engine_bench --worker`: the same workload through NATS, a
`jetserve worker` process running the engine, and results back on reply subjects."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.common import nats_server, spawn
from producer.client import Client, make_request
from schemas.params import SamplingParams

MODEL = "bench-llm"


def _models_file(folder: Path, model_path: str, dtype: str, batched_tokens: int) -> Path:
    path = folder / "models.toml"
    path.write_text(
        f'[[models]]\nname = "{MODEL}"\nengine = "llm"\npath = "{model_path}"\n'
        f'dtype = "{dtype}"\ncapacity = 64\n'
        f"[models.options]\nmax_num_batched_tokens = {batched_tokens}\n"
        "kv_cache_mib = 2048\nmax_model_len = 512\n"
    )
    return path


async def bench_worker(model_path: str, dtype: str, work: Any, batched_tokens: int) -> float:
    with nats_server() as url, tempfile.TemporaryDirectory() as tmp:
        models = _models_file(Path(tmp), model_path, dtype, batched_tokens)
        worker = spawn(
            ["-m", "jetserve", "worker", "--model", MODEL, "--models-file", str(models)],
            env={"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"},
        )
        client = await Client.connect(url)
        try:
            warm = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
            for _ in range(600):
                try:
                    await client.request(
                        MODEL, "completion", {"prompt": [1, 2, 3]}, parameters=warm, timeout_s=30
                    )
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            requests = [
                make_request(
                    MODEL,
                    "completion",
                    {"prompt": prompt},
                    parameters=SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True),
                    timeout_s=600,
                )
                for prompt, n in zip(work.prompts, work.new_tokens, strict=True)
            ]
            start = time.perf_counter()
            results = await asyncio.gather(*[client.request_obj(r, 600) for r in requests])
            elapsed = time.perf_counter() - start
        finally:
            await client.close()
            worker.terminate()
            worker.wait()
    produced = sum(r.usage.completion_tokens for r in results)
    assert produced == work.total_new, (produced, work.total_new)
    return produced / elapsed
