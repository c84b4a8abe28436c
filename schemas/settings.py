"""Reading settings from an environment mapping, with errors that name the setting.

Every process builds one config object in `main()` from an injected mapping (normally
`os.environ`); nothing reads the environment at import time. Environment variable names live
with the config objects that read them, all prefixed `JETSERVE_`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

NATS_URL = "JETSERVE_NATS_URL"
DATABASE_URL = "JETSERVE_DATABASE_URL"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DUPLICATE_WINDOW_S = "JETSERVE_DUPLICATE_WINDOW_S"
#: One window for every process: the streams' JetStream de-duplication (workers, scheduler)
#: and the bridge's idempotent results, which must outlive the redeliveries it covers.
DEFAULT_DUPLICATE_WINDOW_S = 120.0


class ConfigError(ValueError):
    """A setting is missing or has a value that cannot be used."""


def _parse(env: Mapping[str, str], key: str, default: T, cast: Callable[[str], T], what: str) -> T:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return cast(raw.strip())
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not {what}") from None


def get_str(env: Mapping[str, str], key: str, default: str) -> str:
    return _parse(env, key, default, str, "a string")


def get_int(env: Mapping[str, str], key: str, default: int, *, minimum: int | None = None) -> int:
    value = _parse(env, key, default, int, "an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return value


def get_float(
    env: Mapping[str, str], key: str, default: float, *, minimum: float | None = None
) -> float:
    value = _parse(env, key, default, float, "a number")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def get_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    return _parse(env, key, default, _bool, "a boolean (true/false)")


def nats_url(env: Mapping[str, str]) -> str:
    """The NATS server every process connects to: `JETSERVE_NATS_URL`, else the local one."""
    return get_str(env, NATS_URL, DEFAULT_NATS_URL)


def duplicate_window_s(env: Mapping[str, str]) -> float:
    """`JETSERVE_DUPLICATE_WINDOW_S`, the same for every process (at least 1 s)."""
    return get_float(env, DUPLICATE_WINDOW_S, DEFAULT_DUPLICATE_WINDOW_S, minimum=1.0)


def database_url(env: Mapping[str, str]) -> str | None:
    """`JETSERVE_DATABASE_URL` (None: unset)."""
    return env.get(DATABASE_URL) or None


def required_database_url(env: Mapping[str, str], needed_for: str) -> str:
    """`JETSERVE_DATABASE_URL`; unset, a `ConfigError` saying what needs it (`needed_for`)."""
    url = database_url(env)
    if url is None:
        raise ConfigError(f"{DATABASE_URL} is not set: {needed_for}")
    return url
