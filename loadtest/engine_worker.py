"""The full worker path for `engine_bench --worker`: the same workload through NATS, a
`jetserve worker` process running the engine, and results back on reply subjects.

    async with WorkerPath(model_path, dtype, batched_tokens) as path:
        rate = await path.run(work)     # tokens/s; call once per round
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
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


class WorkerPath:
    """A nats-server and one worker process for the model, kept across rounds (idle between
    them), and a producer client."""

    def __init__(self, model_path: str, dtype: str, batched_tokens: int) -> None:
        self._args = (model_path, dtype, batched_tokens)
        self._stack = contextlib.ExitStack()
        self._worker: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None

    async def __aenter__(self) -> WorkerPath:
        url = self._stack.enter_context(nats_server())
        tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        models = _models_file(tmp, *self._args)
        self._worker = spawn(
            ["-m", "jetserve", "worker", "--model", MODEL, "--models-file", str(models)],
            env={"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"},
        )
        self._client = await Client.connect(url)
        warm = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
        for _ in range(600):
            try:
                await self._client.request(
                    MODEL, "completion", {"prompt": [1, 2, 3]}, parameters=warm, timeout_s=30
                )
                return self
            except Exception:
                if self._worker.poll() is not None:
                    break
                await asyncio.sleep(0.2)
        await self.__aexit__(None, None, None)
        raise RuntimeError("the benchmark's worker never answered")

    async def run(self, work: Any) -> float:
        """The workload, all submitted at once: generated tokens / wall time."""
        assert self._client is not None
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
        results = await asyncio.gather(*[self._client.request_obj(r, 600) for r in requests])
        elapsed = time.perf_counter() - start
        produced = sum(r.usage.completion_tokens for r in results)
        assert produced == work.total_new, (produced, work.total_new)
        return produced / elapsed

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._worker is not None:
            self._worker.terminate()
            self._worker.wait(30)
            self._worker = None
        self._stack.close()
