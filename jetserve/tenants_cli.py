"""`jetserve tenants ...`: tenant limits (`schemas/limits.py`) in the store.

    jetserve tenants list [--tenant acme]
    jetserve tenants set-limits acme --rpm 600 --tpm 200000 [--max-in-flight 8]
                                     [--batch-queue-lines N] [--batch-queue-tokens N]
                                     [--model NAME]
    jetserve tenants clear-limits acme [--model NAME]

`set-limits` replaces the tenant's row for the model (all its models by default); a value of
`none` removes that one limit. Bridges read rows through a cache of
`JETSERVE_LIMITS_CACHE_TTL_S` (5 s): a change applies within it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jetserve.keys_cli import _with_db
from schemas.limits import ALL_MODELS, FIELDS, MAX_LIMIT, TenantLimits, check_limits

_UNSET = "none"


def limit_value(text: str) -> int | None:
    """An argument's limit: a whole number from 1 to MAX_LIMIT (`_` separators allowed), or
    `none`."""
    if text.strip().lower() == _UNSET:
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or 'none')") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value:,} is not between 1 and {MAX_LIMIT:,}")
    return value


def add_arguments(sub: Any, set_func: Any, clear_func: Any, list_func: Any) -> None:
    p = sub.add_parser("list", help="list tenants' limit rows")
    p.set_defaults(func=list_func)
    p.add_argument("--tenant")
    p = sub.add_parser("set-limits", help="set a tenant's limits (replaces its row)")
    p.set_defaults(func=set_func)
    p.add_argument("tenant")
    p.add_argument("--model", default=ALL_MODELS, help="one model's row (default: all models)")
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=limit_value, default=None, metavar="N|none")
    p = sub.add_parser("clear-limits", help="remove a tenant's row (the defaults apply)")
    p.set_defaults(func=clear_func)
    p.add_argument("tenant")
    p.add_argument("--model", default=ALL_MODELS)


def _row_text(tenant: str, model: str, limits: TenantLimits) -> str:
    values = "  ".join(
        f"{name}={'-' if getattr(limits, name) is None else f'{getattr(limits, name):,}'}"
        for name in FIELDS
    )
    return f"{tenant:<24} {model:<20} {values}"


def cmd_set_limits(args: argparse.Namespace) -> int:
    from scheduler.store.keys import validate_tenant
    from scheduler.store.limits import set_limits
    from schemas.names import InvalidName, validate_model_name

    try:
        validate_tenant(args.tenant)
        if args.model != ALL_MODELS:
            validate_model_name(args.model)
        limits = check_limits(TenantLimits(**{name: getattr(args, name) for name in FIELDS}))
    except (ValueError, InvalidName) as exc:
        print(f"jetserve tenants set-limits: {exc}", file=sys.stderr)
        return 2

    async def work(conn: Any) -> int:
        await set_limits(conn, args.tenant, limits, args.model)
        print(_row_text(args.tenant, args.model, limits))
        return 0

    return _with_db(work)


def cmd_clear_limits(args: argparse.Namespace) -> int:
    from scheduler.store.limits import clear_limits

    async def work(conn: Any) -> int:
        if await clear_limits(conn, args.tenant, args.model):
            print(f"cleared {args.tenant} {args.model}: the defaults apply")
            return 0
        print(f"{args.tenant} has no row for {args.model}", file=sys.stderr)
        return 1

    return _with_db(work)


def cmd_list(args: argparse.Namespace) -> int:
    from scheduler.store.limits import list_limits

    async def work(conn: Any) -> int:
        rows = await list_limits(conn, args.tenant)
        if not rows:
            print("no tenant has limits of its own (the bridge's defaults apply to all)")
        for row in rows:
            print(_row_text(row.tenant, row.model, row.limits))
        return 0

    return _with_db(work)
