"""Routes without I/O: the weighted choice, stickiness, the checks, the models file's routes."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from schemas.routes import (
    InvalidRoute,
    Plan,
    Route,
    Shadow,
    Target,
    check_route,
    decode_route,
    encode_route,
    parse_targets,
    sticky_of_body,
)
from schemas.settings import ConfigError
from workers.config import load_routes

MODELS = {"smollm2", "smollm2-ft", "smollm2-next", "echo"}


def chat(a: int = 90, b: int = 10, shadow: Shadow | None = None) -> Route:
    return Route("chat", [Target("smollm2", a), Target("smollm2-ft", b)], shadow)


def test_10000_distinct_ids_split_90_10_within_one_point() -> None:
    plan = Plan(chat())
    seen = Counter(plan.choose(uuid.uuid4().hex) for _ in range(10_000))
    assert abs(seen["smollm2-ft"] / 10_000 - 0.10) <= 0.01, seen
    assert seen["smollm2"] + seen["smollm2-ft"] == 10_000


def test_same_key_same_version_and_users_stay_on_one_version() -> None:
    plan = Plan(chat(50, 50))
    users = [f"user-{i}" for i in range(50)]
    versions: dict[str, set[str]] = {u: set() for u in users}
    for i in range(1000):
        user = users[i % 50]
        versions[user].add(plan.choose(user))
    assert all(len(v) == 1 for v in versions.values())
    # Both versions serve some users (50 users on a 50/50 split).
    assert {next(iter(v)) for v in versions.values()} == {"smollm2", "smollm2-ft"}


def test_a_change_of_weights_moves_only_the_keys_in_the_changed_slice() -> None:
    before, after = Plan(chat(90, 10)), Plan(chat(80, 20))
    keys = [uuid.uuid4().hex for _ in range(5000)]
    moved = [k for k in keys if before.choose(k) != after.choose(k)]
    # Only smollm2 -> smollm2-ft moves (about a tenth of the keys), never the other way.
    assert all(before.choose(k) == "smollm2" for k in moved)
    assert 0.07 < len(moved) / len(keys) < 0.13


def test_weight_zero_gets_nothing_and_one_target_takes_all() -> None:
    plan = Plan(chat(0, 100))
    assert {plan.choose(uuid.uuid4().hex) for _ in range(500)} == {"smollm2-ft"}


def test_shadow_mirrors_its_percent_independently_of_the_version() -> None:
    plan = Plan(chat(shadow=Shadow("smollm2-next", 20)))
    keys = [uuid.uuid4().hex for _ in range(10_000)]
    mirrored = [k for k in keys if plan.shadow(k) == "smollm2-next"]
    assert abs(len(mirrored) / len(keys) - 0.20) <= 0.015
    ft_share = sum(plan.choose(k) == "smollm2-ft" for k in mirrored) / len(mirrored)
    assert abs(ft_share - 0.10) <= 0.03
    assert Plan(chat()).shadow(keys[0]) is None


def test_route_round_trips_with_its_tag() -> None:
    route = chat(shadow=Shadow("smollm2-next", 5))
    data = encode_route(route)
    assert b'"type":"route.v1"' in data
    assert decode_route(data) == route


@pytest.mark.parametrize(
    ("route", "routes", "problem"),
    [
        (Route("chat", [Target("nope", 1)]), {}, "model 'nope' has no request stream"),
        (chat(0, 0), {}, "must sum to more than 0"),
        (Route("bad.name", [Target("echo", 1)]), {}, "name: invalid model name"),
        (Route("echo", [Target("smollm2", 1)]), {}, "is a model's name"),
        (Route("chat", []), {}, "has no targets"),
        (Route("chat", [Target("echo", 1), Target("echo", 2)]), {}, "listed twice"),
        (
            Route("a", [Target("b", 1)]),
            {"b": Route("b", [Target("a", 1)])},
            "a cycle of routes: a -> b -> a",
        ),
        (
            Route("a", [Target("b", 1)]),
            {"b": Route("b", [Target("echo", 1)])},
            "'b' is a served name",
        ),
        (chat(shadow=Shadow("ghost", 5)), {}, "shadow: model 'ghost' has no request stream"),
    ],
)
def test_bad_routes_are_refused_naming_the_problem(
    route: Route, routes: dict[str, Route], problem: str
) -> None:
    with pytest.raises(InvalidRoute, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_route(route, MODELS, routes)


def test_parse_targets() -> None:
    assert parse_targets(["a=90", "b=10"]) == [Target("a", 90), Target("b", 10)]
    for bad in ("a", "a=-1", "a=x", "a=1.5"):
        with pytest.raises(InvalidRoute, match="MODEL=WEIGHT"):
            parse_targets([bad])


def test_sticky_key_order_of_a_body() -> None:
    assert sticky_of_body(b'{"user": "u", "safety_identifier": "s"}') == "s"
    assert sticky_of_body(b'{"user": "u", "prompt_cache_key": "p"}') == "p"
    assert sticky_of_body(b'{"user": "u"}') == "u"
    assert sticky_of_body(b'{"model": "x"}') is None
    assert sticky_of_body(b"not json") is None


_MODELS_TOML = """
[[models]]
name = "v1"
[[models]]
name = "v2"
"""


def test_models_file_routes(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        _MODELS_TOML
        + """
[[routes]]
name = "chat"
targets = { v1 = 90, v2 = 10 }
shadow = { model = "v2", percent = 5 }
"""
    )
    [route] = load_routes(path)
    assert route == Route("chat", [Target("v1", 90), Target("v2", 10)], Shadow("v2", 5))


@pytest.mark.parametrize(
    ("routes", "problem"),
    [
        (
            '[[routes]]\nname = "a"\ntargets = { b = 1 }\n[[routes]]\nname = "b"\n'
            "targets = { a = 1 }\n",
            "cycle of routes: a -> b -> a",
        ),
        ('[[routes]]\nname = "chat"\ntargets = { v3 = 1 }\n', "'v3' has no request stream"),
        ('[[routes]]\nname = "v1"\ntargets = { v2 = 1 }\n', "is a model's name"),
        ('[[routes]]\nname = "chat"\ntargets = { v1 = 0 }\n', "sum to more than 0"),
    ],
)
def test_models_file_bad_routes(tmp_path: Path, routes: str, problem: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(_MODELS_TOML + routes)
    with pytest.raises(ConfigError, match=problem):
        load_routes(path)
