"""The running local stack (`jetserve up`), as command-line tools find it: `stack.json` in
the data directory (`--data-dir`, else JETSERVE_DATA_DIR, else `.jetserve`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.settings import ConfigError


def stack_file(data_dir: str | None = None, env: Mapping[str, str] = os.environ) -> Path:
    return Path(data_dir or env.get("JETSERVE_DATA_DIR") or ".jetserve") / "stack.json"


def read_stack(data_dir: str | None = None, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The stack's info; ConfigError when no local stack is running there."""
    path = stack_file(data_dir, env)
    try:
        info = dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no local stack: {path} not readable ({exc})") from exc
    pid = info.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        raise ConfigError(f"no local stack: the `jetserve up` of {path} (pid {pid}) has exited")
    return info


def stack_value(key: str, env: Mapping[str, str] = os.environ) -> str | None:
    """A URL of the running local stack (`nats_url`, `database_url`, `http_url`), or None."""
    try:
        value = read_stack(None, env).get(key)
    except ConfigError:
        return None
    return str(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
