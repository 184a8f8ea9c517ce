"""How the core walks the request-path hooks: one implementation or several, each one async,
plain, or plain returning an awaitable, the answers combine the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import pluggy
import pytest

from first_proxy import hookspecs
from first_proxy.hooks import Hooks
from first_proxy.hookspecs import hookimpl
from first_proxy.types import Denial, Identity, Target

ALICE = Identity(user_id="alice", username="alice")
TARGETS = tuple(Target(name=name, model="m", backend="openai", upstream_model="m")
                for name in ("a", "b"))


def authenticate(credential: str | None) -> Identity | None:
    return ALICE if credential == "good" else None


def authorize(target: Target | None) -> Denial | None:
    return Denial("no b") if target is not None and target.name == "b" else None


def check_limits(model: str) -> Denial | None:
    return Denial("busy", status=429) if model == "x" else None


def select_target(model: str, candidates: Sequence[Target]) -> list[Target] | None:
    return list(reversed(candidates)) if model == "flip" else None


async def later(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


# Each answers every request-path hook, some asking for a few arguments only (the core then
# picks them), some for all of them.

class AsyncPlugin:
    @hookimpl
    async def authenticate(self, credential: str | None) -> Identity | None:
        return await later(authenticate(credential))

    @hookimpl
    async def authorize(self, identity: Identity, model: str, target: Target | None,
                        gateway: Any) -> Denial | None:
        return await later(authorize(target))

    @hookimpl
    async def check_limits(self, model: str) -> Denial | None:
        return await later(check_limits(model))

    @hookimpl
    async def select_target(self, model: str, candidates: Sequence[Target],
                            statuses: Any, gateway: Any) -> list[Target] | None:
        return await later(select_target(model, candidates))


class AwaitablePlugin:
    """Plain functions that return awaitables."""

    @hookimpl
    def authenticate(self, credential: str | None) -> Awaitable[Identity | None]:
        return later(authenticate(credential))

    @hookimpl
    def authorize(self, identity: Identity, model: str, target: Target | None,
                  gateway: Any) -> Awaitable[Denial | None]:
        return later(authorize(target))

    @hookimpl
    def check_limits(self, model: str) -> Awaitable[Denial | None]:
        return later(check_limits(model))

    @hookimpl
    def select_target(self, model: str, candidates: Sequence[Target], statuses: Any,
                      gateway: Any) -> Awaitable[list[Target] | None]:
        return later(select_target(model, candidates))


class PlainPlugin:
    @hookimpl
    def authenticate(self, credential: str | None) -> Identity | None:
        return authenticate(credential)

    @hookimpl
    def authorize(self, identity: Identity, model: str, target: Target | None,
                  gateway: Any) -> Denial | None:
        return authorize(target)

    @hookimpl
    def check_limits(self, model: str) -> Denial | None:
        return check_limits(model)

    @hookimpl
    def select_target(self, model: str, candidates: Sequence[Target], statuses: Any,
                      gateway: Any) -> list[Target] | None:
        return select_target(model, candidates)


class Silent:
    """A second plugin that has no say in anything: the walk over two must answer as one."""

    @hookimpl
    def authenticate(self, credential: str | None) -> None:
        return None

    @hookimpl
    def authorize(self, model: str) -> None:
        return None

    @hookimpl
    def check_limits(self, model: str) -> None:
        return None

    @hookimpl
    def select_target(self, model: str) -> None:
        return None


def hooks(*plugins: object) -> Hooks:
    pm = pluggy.PluginManager("first_proxy")
    pm.add_hookspecs(hookspecs)
    for p in plugins:
        pm.register(p)
    return Hooks(pm, gateway=object())


async def answers(h: Hooks) -> list[Any]:
    limits_x: list[Any] = []
    limits_y: list[Any] = []
    return [
        await h.authenticate(None, "good"),
        await h.authenticate(None, "bad"),
        await h.authorize(ALICE, "m", None),
        await h.authorize(ALICE, "m", TARGETS[1]),
        await h.check_limits(limits_x, ALICE, "x", None),
        await h.check_limits(limits_y, ALICE, "y", None),
        await h.select_target("flip", TARGETS, {}),
        await h.select_target("keep", TARGETS, {}),
    ]


def summary(found: Sequence[Any]) -> list[Any]:
    def one(value: Any) -> Any:
        if isinstance(value, Denial):
            return ("denial", value.reason, value.status)
        if isinstance(value, list | tuple):
            return [one(v) for v in value]
        return value
    return [one(v) for v in found]


@pytest.mark.parametrize("plugin", [AsyncPlugin, AwaitablePlugin, PlainPlugin])
async def test_one_implementation_answers_as_it_does_beside_others(plugin: type) -> None:
    alone = summary(await answers(hooks(plugin())))
    assert alone == summary(await answers(hooks(plugin(), Silent())))
    assert alone == [
        ALICE, None,
        None, ("denial", "no b", 403),
        [("denial", "busy", 429)], [],
        [TARGETS[1], TARGETS[0]], list(TARGETS),
    ]
