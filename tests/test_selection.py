"""The built-in order of targets, the circuit breaker, and how statuses combine: unit tests.

The same ranking end to end, through gateways and fake schedulers, is in the first_pbs_status
plugin's federation tests; the worked example of docs/federation.md is checked here.
"""

from __future__ import annotations

from typing import Any

import pytest

from first_proxy.builtin.selection import order, rank
from first_proxy.config import parse_config
from first_proxy.errors import ConfigError
from first_proxy.gateway import Gateway
from first_proxy.health import Health
from first_proxy.plugins import get_plugin_manager
from first_proxy.status import combine, model_facts, state_of
from first_proxy.types import Status, Target

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def target(name: str, weight: float = 1.0, cluster: str = "local") -> Target:
    return Target(name=name, model=MODEL, backend="reference", upstream_model=MODEL,
                  cluster=cluster, weight=weight)


def running(**load: float) -> Status:
    return Status(reachable=True, models={MODEL: "running"}, **load)


def cluster(state: str, **facts: Any) -> Status:
    """A scheduler's status listing the model in ``state``, with ``facts`` about its job."""
    return Status(reachable=True, models={MODEL: state},
                  detail={"models": {MODEL: {"state": state, **facts}}})


def names(targets: list[Target]) -> list[str]:
    return [t.name for t in targets]


def test_running_beats_starting_beats_queued_beats_unknown_beats_none() -> None:
    found = [target(n) for n in ("none", "unknown", "queued", "held", "starting", "running",
                                 "down", "failed")]
    statuses = {
        found[0].key: Status(reachable=True, models={"other-model": "running"}),
        found[2].key: cluster("queued"),
        found[3].key: cluster("held"),
        found[4].key: cluster("starting"),
        found[5].key: running(),
        found[6].key: Status(reachable=False, last_error="connection refused"),
        found[7].key: cluster("failed"),
    }
    # None, held, down and failed are one tier: they keep the order they came in.
    assert names(order(found, statuses)) == [
        "running", "starting", "queued", "unknown", "none", "held", "down", "failed"]


def test_an_unreadable_scheduler_is_unknown_not_down() -> None:
    a, b = target("a"), target("b")
    statuses = {a.key: Status(reachable=False), b.key: Status(
        reachable=False, last_error="qstat timed out", detail={"state": "unknown"})}
    assert names(order([a, b], statuses)) == ["b", "a"]


def test_the_least_loaded_running_target_first() -> None:
    busy, idle, full_cache, waiting, silent = (
        target(n) for n in ("busy", "idle", "cache", "waiting", "silent"))
    statuses = {busy.key: running(queue_depth=0, running_requests=12),
                idle.key: running(queue_depth=0, running_requests=3),
                full_cache.key: running(queue_depth=0, running_requests=3, kv_cache_usage=0.9),
                waiting.key: running(queue_depth=4, running_requests=1),
                silent.key: running()}
    assert names(order([silent, waiting, busy, full_cache, idle], statuses)) == [
        "idle", "cache", "busy", "waiting", "silent"]


def test_the_shortest_wait_first_among_queued_targets() -> None:
    second, first, old_second, unknown_place = (
        target(n) for n in ("second", "first", "old-second", "unknown-place"))
    statuses = {second.key: cluster("queued", queue_position=2, since=2000.0),
                first.key: cluster("queued", queue_position=1, since=3000.0),
                old_second.key: cluster("queued", queue_position=2, since=1000.0),
                unknown_place.key: cluster("queued")}
    assert names(order([unknown_place, second, first, old_second], statuses)) == [
        "first", "old-second", "second", "unknown-place"]


def test_ties_go_by_weight_then_take_turns() -> None:
    light, heavy, other = target("light", 1), target("heavy", 3), target("other", 1)
    statuses = {t.key: running() for t in (light, heavy, other)}
    turns = [names(order([light, heavy, other], statuses, turn=turn)) for turn in range(4)]
    assert turns == [["heavy", "light", "other"], ["heavy", "other", "light"],
                     ["heavy", "light", "other"], ["heavy", "other", "light"]]


def test_only_exact_equals_take_turns() -> None:
    a, b, c = target("a"), target("b"), target("c")
    statuses = {a.key: running(running_requests=1), b.key: running(running_requests=0),
                c.key: running(running_requests=0)}
    assert [names(order([a, b, c], statuses, turn=t)) for t in range(3)] == [
        ["b", "c", "a"], ["c", "b", "a"], ["b", "c", "a"]]


def test_a_cooled_down_target_is_ranked_last() -> None:
    best, down = target("best"), target("down")
    statuses = {best.key: running(), down.key: Status(reachable=False)}
    assert names(order([best, down], statuses, cooled={best.key})) == ["down", "best"]
    assert rank(best, statuses[best.key], cooled=True)[0] > rank(down, statuses[down.key])[0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_cool_a_target_down_and_a_success_ends_it() -> None:
    clock, a = Clock(), target("a")
    health = Health(failures=3, seconds=30, max_seconds=100, clock=clock)
    health.failed(a)
    health.failed(a)
    assert health.cooled() == frozenset()
    health.failed(a)
    assert health.cooled() == {a.key}
    assert health.state(a) == {"failures": 3, "cooldown_left": 30.0}
    health.failed(a)  # tried as the last resort while cooled down: the cool-down stands
    assert health.state(a) == {"failures": 4, "cooldown_left": 30.0}

    clock.now += 30  # over: tried again, and each retry that fails doubles it, up to the cap
    assert health.cooled() == frozenset()
    cooldowns = []
    for _ in range(4):
        health.failed(a)
        state = health.state(a)
        assert state is not None
        cooldowns.append(state["cooldown_left"])
        clock.now += state["cooldown_left"]
    assert cooldowns == [60.0, 100.0, 100.0, 100.0]

    health.succeeded(a)
    assert health.state(a) is None
    for _ in range(3):
        health.failed(a)
    assert health.state(a) == {"failures": 3, "cooldown_left": 30.0}  # from the start again


def test_a_threshold_of_zero_never_cools_down() -> None:
    a = target("a")
    health = Health(failures=0)
    for _ in range(10):
        health.failed(a)
    assert health.cooled() == frozenset() and health.state(a) is None


def test_a_scheduler_that_lists_no_job_for_the_model_says_it_is_stopped() -> None:
    a = target("a", cluster="polaris")
    nothing = Status(reachable=True, models={})
    combined = combine(None, nothing, MODEL)
    assert combined is not None and state_of(a, combined) == "stopped"
    # A backend's status that lists no models says the target serves its own.
    assert state_of(a, Status(reachable=True)) == "running"
    up = Status(reachable=True, running_requests=2)
    combined = combine(up, cluster("queued", queue_position=3), MODEL)
    assert combined is not None and state_of(a, combined) == "queued"
    assert combined.running_requests == 2
    assert model_facts(a, combined)["queue_position"] == 3


def test_the_worked_example_of_docs_federation_md() -> None:
    polaris = target("polaris-llama", cluster="polaris")
    sophia = target("sophia-llama", cluster="sophia")
    aurora = target("aurora-llama", cluster="aurora")
    cloud = target("cloud-llama", cluster="cloud", weight=0.5)
    local = target("local-llama")
    statuses = {
        polaris.key: combine(Status(reachable=True, running_requests=6),
                             cluster("running"), MODEL),
        sophia.key: combine(Status(reachable=True, running_requests=2),
                            cluster("running"), MODEL),
        aurora.key: cluster("queued", queue_position=1, since=1000.0),
        cloud.key: Status(reachable=True),
        local.key: Status(reachable=False, last_error="connection refused"),
    }
    candidates = [polaris, sophia, aurora, cloud, local]
    first = order(candidates, {k: v for k, v in statuses.items() if v is not None})
    assert names(first) == ["sophia-llama", "polaris-llama", "cloud-llama", "aurora-llama",
                            "local-llama"]
    # Sophia fails three times in a row: it is cooled down, and ranked last.
    cooled = order(candidates, {k: v for k, v in statuses.items() if v is not None},
                   cooled={sophia.key})
    assert names(cooled) == ["polaris-llama", "cloud-llama", "aurora-llama", "local-llama",
                             "sophia-llama"]


def test_the_cool_down_and_the_weights_come_from_gateway_yaml() -> None:
    config = parse_config({
        "status": {"cooldown_failures": 5, "cooldown_seconds": 10, "cooldown_max_seconds": 40},
        "models": {MODEL: {"targets": [{"name": "a", "backend": "reference", "weight": 2.5},
                                       {"name": "b", "backend": "reference"}]}}})
    gateway = Gateway(config, get_plugin_manager(load_entrypoints=False))
    health = gateway.health
    assert (health.threshold, health.seconds, health.max_seconds) == (5, 10.0, 40.0)
    assert [t.weight for t in config.models[MODEL].targets] == [2.5, 1.0]
    with pytest.raises(ConfigError) as caught:
        parse_config({"status": {"cooldown_failures": -1}, "models": {MODEL: {"targets": [
            {"name": "a", "backend": "reference", "weight": "heavy"}]}}})
    assert caught.value.problems == [
        ("status.cooldown_failures", "expected a number >= 0, got -1"),
        (f"models.{MODEL}.targets[0].weight", "expected a number, got a string 'heavy'")]
