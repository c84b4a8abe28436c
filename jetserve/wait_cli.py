"""`jetserve wait`: block until every model of the running local stack has a live worker.

Exit 0 once each model has a worker serving. Exit 1 at the timeout, naming each model still
loading or restarting (with its worker log's last line); exit 1 at once when a model's worker
has failed `--max-failures` times in a row without ever serving (a bad model path, say).
"""

from __future__ import annotations

import argparse
import sys
import time

from jetserve.local_stack import read_stack
from schemas.settings import ConfigError


def wait(data_dir: str | None, timeout_s: float, max_failures: int, poll_s: float = 0.5) -> int:
    end = time.monotonic() + timeout_s
    while True:
        try:
            info = read_stack(data_dir)
        except ConfigError as exc:
            print(f"jetserve wait: {exc}", file=sys.stderr)
            return 1
        states: dict[str, dict[str, object]] = info.get("model_states") or {}
        models = [str(m) for m in info.get("models", [])]
        waiting = {m: states.get(m, {"state": "starting"}) for m in models}
        waiting = {m: s for m, s in waiting.items() if s.get("state") != "ready"}
        if not waiting:
            print(f"jetserve wait: {len(models)} models ready ({', '.join(models)})")
            return 0
        failed = {
            m: s
            for m, s in waiting.items()
            if s.get("state") == "restarting" and int(str(s.get("failures", 0))) >= max_failures
        }
        if failed or time.monotonic() >= end:
            for model, state in (failed or waiting).items():
                print(f"jetserve wait: {model} not ready: {_describe(state)}", file=sys.stderr)
            return 1
        time.sleep(poll_s)


def _describe(state: dict[str, object]) -> str:
    name = state.get("state")
    if name == "loading":
        return f"still loading after {state.get('for_s')} s"
    if name == "restarting":
        return (
            f"its worker failed {state.get('failures')} times (exit {state.get('exit_code')}): "
            f"{state.get('last_log_line')}"
        )
    return str(name)


def cmd_wait(args: argparse.Namespace) -> int:
    return wait(args.data_dir, args.timeout_s, args.max_failures)
