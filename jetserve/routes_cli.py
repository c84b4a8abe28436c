"""`jetserve routes set|show|promote|rollback|delete`: the live route table (natsio/routes.py)
from the command line. NATS: `--nats-url`, else JETSERVE_NATS_URL, else the local stack's.

    jetserve routes set chat smollm2=90 smollm2-ft=10 [--shadow smollm2-next=5]
    jetserve routes show [--json]
    jetserve routes promote chat smollm2-ft
    jetserve routes rollback chat

Every change is checked first (the models exist with a stream, the weights sum to more than
0, the name is a valid model name and no model's, no cycle) and refused with the problem
named; exit status 2 then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from jetserve.dlq_cli import nats_url
from natsio.connection import connect
from natsio.routes import RouteStore
from schemas.routes import InvalidRoute, Route, Shadow, parse_targets


def _run(args: argparse.Namespace, work: Callable[[RouteStore], Awaitable[int]]) -> int:
    async def run() -> int:
        nc = await connect(nats_url(args), name="jetserve-routes")
        try:
            return await work(await RouteStore.open(nc))
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except InvalidRoute as exc:
        print(f"jetserve routes: refused: {exc}", file=sys.stderr)
        return 2


def describe(route: Route) -> str:
    total = sum(t.weight for t in route.targets) or 1
    parts = [f"{t.model}={t.weight} ({100 * t.weight / total:.1f}%)" for t in route.targets]
    line = f"{route.name} -> " + ", ".join(parts)
    if route.shadow is not None:
        line += f"; shadow {route.shadow.model} {route.shadow.percent:g}%"
    return line


def _shadow(raw: str | None) -> Shadow | None:
    if raw is None:
        return None
    model, _sep, percent = raw.partition("=")
    try:
        return msgspec.convert({"model": model, "percent": float(percent)}, Shadow)
    except (ValueError, msgspec.ValidationError):
        raise InvalidRoute(
            f"shadow: write MODEL=PERCENT, PERCENT in (0, 100], got {raw!r}"
        ) from None


def cmd_set(args: argparse.Namespace) -> int:
    async def work(store: RouteStore) -> int:
        route = await store.set(args.name, parse_targets(args.targets), _shadow(args.shadow))
        print(describe(route))
        return 0

    return _run(args, work)


def cmd_show(args: argparse.Namespace) -> int:
    async def work(store: RouteStore) -> int:
        routes: Mapping[str, Route] = await store.all()
        if args.json:
            print(json.dumps({n: msgspec.to_builtins(r) for n, r in sorted(routes.items())}))
            return 0
        for name in sorted(routes):
            print(describe(routes[name]))
        if not routes:
            print("no routes")
        return 0

    return _run(args, work)


def cmd_promote(args: argparse.Namespace) -> int:
    async def work(store: RouteStore) -> int:
        print(describe(await store.promote(args.name, args.model)))
        return 0

    return _run(args, work)


def cmd_rollback(args: argparse.Namespace) -> int:
    async def work(store: RouteStore) -> int:
        print(describe(await store.rollback(args.name)))
        return 0

    return _run(args, work)


def cmd_delete(args: argparse.Namespace) -> int:
    async def work(store: RouteStore) -> int:
        await store.delete(args.name)
        print(f"deleted {args.name}")
        return 0

    return _run(args, work)
