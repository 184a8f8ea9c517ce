"""A simulation of federated target selection: first-proxy's built-in order against random,
round-robin and the original gateway's tiers.

One model on four clusters whose jobs queue, start, run and end while a stream of requests
comes in; servers die, hang or answer errors now and then. The gateway sees the clusters as
its pollers would: the scheduler's state and each server's load as of the last poll. Each
policy orders the targets for each request; an attempt at a target that is not serving costs
what it would (a refused connection, an error, a timeout) and, where the policy fails over,
the request moves on to the next target.

first-proxy's policy is the core's own code: ``first_proxy.builtin.selection.order`` fed by
``first_proxy.status.combine``, with ``first_proxy.health.Health`` told of every attempt. No
network, standard library otherwise; seeded, so every run prints the same table, in a few
seconds:

    python bench/federation.py            # --help for the scenario's knobs
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from first_proxy.builtin.selection import order
from first_proxy.health import Health
from first_proxy.status import combine
from first_proxy.types import Status, Target

MODEL = "meta-llama/Meta-Llama-3.1-70B-Instruct"
#: Seconds each phase of a model job lasts: (shortest, longest).
PHASES = {"queued": (5 * 60, 40 * 60), "starting": (10 * 60, 15 * 60),
          "running": (30 * 60, 120 * 60), "stopped": (0, 20 * 60)}
_NEXT = {"queued": "starting", "starting": "running", "running": "stopped", "stopped": "queued"}
#: What goes wrong with a running server, how often each, and what an attempt then costs.
FAILURES = {"dead": 0.4, "erroring": 0.4, "hung": 0.2}
REFUSED, ERROR = 0.01, 0.2  # seconds to a refused connection, to a 500
#: A cluster's name and the requests its server serves at full speed at once.
CLUSTERS = (("polaris", 16), ("sophia", 8), ("aurora", 24), ("crux", 8))


@dataclass
class Cluster:
    """One cluster's truth over time: its job's phases and its server's failures."""

    name: str
    capacity: int
    starts: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    failures: list[tuple[float, float, str]] = field(default_factory=list)
    target: Target = field(init=False)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.target = Target(name=self.name, model=MODEL, backend="sim", upstream_model=MODEL,
                             cluster=self.name)

    def phase(self, t: float) -> tuple[str, float, float]:
        """The job's phase at ``t``, when it began and when it ends."""
        i = bisect.bisect_right(self.starts, t) - 1
        end = self.starts[i + 1] if i + 1 < len(self.starts) else math.inf
        return self.phases[i], self.starts[i], end

    def failure(self, t: float) -> str | None:
        for start, end, kind in self.failures:
            if start <= t < end:
                return kind
        return None


def scenario(rng: random.Random, hours: float, failures_per_hour: float) -> list[Cluster]:
    """The clusters' timelines: each starts somewhere in its job's cycle."""
    end = hours * 3600
    clusters = []
    for name, capacity in CLUSTERS:
        cluster = Cluster(name, capacity)
        phase = rng.choice(list(PHASES))
        t = -rng.uniform(*PHASES[phase]) * rng.random()
        while t < end:
            length = rng.uniform(*PHASES[phase])
            cluster.starts.append(max(t, 0.0))
            cluster.phases.append(phase)
            if phase == "running":
                at = t
                while True:
                    at += rng.expovariate(failures_per_hour / 3600)
                    if at >= t + length:
                        break
                    kind = rng.choices(list(FAILURES), weights=list(FAILURES.values()))[0]
                    cluster.failures.append((at, min(at + rng.uniform(120, 600), t + length),
                                             kind))
            t += length
            phase = _NEXT[phase]
        clusters.append(cluster)
    return clusters


def view(cluster: Cluster, t: float) -> Status | None:
    """What the gateway knows of ``cluster`` after a poll at ``t``: the scheduler's state of
    the job (with its queue position) and, from the server's own status, whether it answers
    and how loaded it is."""
    phase, began, ends = cluster.phase(t)
    facts: dict[str, object] = {"state": phase, "since": began}
    if phase == "queued":
        # A job waits behind one job for every ten minutes of its wait still to come.
        facts["queue_position"] = 1 + int(min(ends - t, 3600.0) // 600)
    scheduler = Status(reachable=True, models={MODEL: phase}, checked_at=t,
                       detail={"models": {MODEL: facts}})
    failure = cluster.failure(t) if phase == "running" else None
    if failure in ("dead", "hung"):
        own = Status(reachable=False, last_error=failure, checked_at=t)
    elif phase == "running":
        own = Status(reachable=True, running_requests=cluster.in_flight,
                     queue_depth=max(0, cluster.in_flight - cluster.capacity), checked_at=t)
    else:
        own = None  # no server to ask while the job does not run
    return combine(own, scheduler, MODEL)


class Policy:
    """How a gateway orders the targets, and whether it fails over."""

    name = ""
    failover = True

    def order(self, targets: Sequence[Target], statuses: dict[str, Status]) -> list[Target]:
        raise NotImplementedError

    def began(self, target: Target) -> None:
        """An attempt at ``target`` begins."""

    def ended(self, target: Target, ok: bool) -> None:
        """It failed (``ok`` false: when the failure shows), or its answer is complete."""


class FirstProxy(Policy):
    name = "first-proxy (tiers, least loaded, cool-down, failover)"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.health = Health(3, 30.0, 600.0, clock=clock)
        self.turns = itertools.count()

    def order(self, targets: Sequence[Target], statuses: dict[str, Status]) -> list[Target]:
        health = self.health
        return order(targets, statuses, cooled=health.cooled(), busy=health.busy,
                     turn=next(self.turns))

    def began(self, target: Target) -> None:
        self.health.began(target)

    def ended(self, target: Target, ok: bool) -> None:
        # An answer's first byte is its success; the simulation has it with its end.
        (self.health.succeeded if ok else self.health.failed)(target)
        self.health.ended(target)


class Random(Policy):
    name = "random order, failover"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def order(self, targets: Sequence[Target], statuses: dict[str, Status]) -> list[Target]:
        return self.rng.sample(list(targets), len(targets))


class RoundRobin(Policy):
    name = "round-robin, failover"

    def __init__(self) -> None:
        self.turns = itertools.count()

    def order(self, targets: Sequence[Target], statuses: dict[str, Status]) -> list[Target]:
        at = next(self.turns) % len(targets)
        return [*targets[at:], *targets[:at]]


class OriginalTiers(Policy):
    """The original gateway's federated choice: the first target whose model runs, else the
    first whose job is queued, else the first listed; one attempt, no failover."""

    name = "original tiers (running, queued, first), no failover"
    failover = False

    def order(self, targets: Sequence[Target], statuses: dict[str, Status]) -> list[Target]:
        for wanted in ("running", "queued"):
            for target in targets:
                status = statuses.get(target.key)
                if status is not None and status.models.get(MODEL) == wanted:
                    return [target]
        return [targets[0]]


class AsShipped(Policy):
    """The original as it shipped: its status tier read a renamed key and never fired, so
    every request went to the first target listed; no failover."""

    name = "original as shipped (first listed), no failover"
    failover = False

    def order(self, targets: Sequence[Target], statuses: dict[str, Status]) -> list[Target]:
        return [targets[0]]


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    attempts: int = 0


def simulate(policy: Policy, clusters: list[Cluster], arrivals: list[float],
             services: list[float], *, poll_interval: float, first_byte: float,
             clock: list[float]) -> Outcome:
    """Run the requests through ``policy``; ``clock[0]`` is the simulated time."""
    for cluster in clusters:
        cluster.in_flight = 0
    targets = [c.target for c in clusters]
    by_key = {c.target.key: c for c in clusters}
    statuses: dict[str, Status] = {}
    outcome = Outcome()
    seq = itertools.count()
    # (time, order, kind, payload): arrivals, attempts, ends of service, polls.
    events: list[tuple[float, int, str, object]] = [
        (t, next(seq), "arrive", i) for i, t in enumerate(arrivals)]
    events.append((0.0, next(seq), "poll", None))
    heapq.heapify(events)
    end = arrivals[-1] if arrivals else 0.0
    while events:
        t, _, kind, payload = heapq.heappop(events)
        clock[0] = t
        if kind == "poll":
            for cluster in clusters:
                found = view(cluster, t)
                if found is not None:
                    statuses[cluster.target.key] = found
            if t < end:
                heapq.heappush(events, (t + poll_interval, next(seq), "poll", None))
        elif kind == "done":
            cluster = by_key[str(payload)]
            cluster.in_flight -= 1
            policy.ended(cluster.target, True)
        elif kind == "arrive":
            i = int(payload)  # type: ignore[call-overload]
            tries = policy.order(targets, statuses)
            heapq.heappush(events, (t, next(seq), "try", (i, tries if policy.failover
                                                          else tries[:1], 0)))
        elif kind == "try":
            i, tries, at = payload  # type: ignore[misc]
            cluster = by_key[tries[at].key]
            outcome.attempts += 1
            policy.began(cluster.target)
            phase, _, _ = cluster.phase(t)
            failure = cluster.failure(t) if phase == "running" else "refused"
            if failure is None:
                slow = max(1.0, (cluster.in_flight + 1) / cluster.capacity)
                cluster.in_flight += 1
                finish = t + services[i] * slow
                heapq.heappush(events, (finish, next(seq), "done", cluster.target.key))
                outcome.latencies.append(finish - arrivals[i])
                continue
            cost = {"hung": first_byte, "erroring": ERROR}.get(failure, REFUSED)
            heapq.heappush(events, (t + cost, next(seq), "failed", payload))
        else:  # the attempt's failure shows: the next target, if there is one
            i, tries, at = payload  # type: ignore[misc]
            policy.ended(tries[at], False)
            if at + 1 < len(tries):
                heapq.heappush(events, (t, next(seq), "try", (i, tries, at + 1)))
            else:
                outcome.failed += 1
    return outcome


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=4.0, help="simulated time")
    parser.add_argument("--rate", type=float, default=1.5, help="requests per second")
    parser.add_argument("--service", type=float, default=4.0,
                        help="mean seconds a request takes at full speed")
    parser.add_argument("--failures-per-hour", type=float, default=1.5,
                        help="server failures per running hour on each cluster")
    parser.add_argument("--poll-interval", type=float, default=30.0,
                        help="seconds between two looks at schedulers and servers")
    parser.add_argument("--first-byte", type=float, default=120.0,
                        help="seconds before an attempt at a hung server times out")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    clusters = scenario(rng, args.hours, args.failures_per_hour)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(args.rate)
        if t >= args.hours * 3600:
            break
        arrivals.append(t)
    services = [rng.lognormvariate(math.log(args.service) - 0.125, 0.5) for _ in arrivals]
    clock = [0.0]
    policies: list[Policy] = [FirstProxy(lambda: clock[0]), Random(args.seed), RoundRobin(),
                              OriginalTiers(), AsShipped()]

    nowhere = sum(not any(c.phase(t)[0] == "running" and c.failure(t) is None for c in clusters)
                  for t in arrivals)
    print(f"{len(arrivals)} requests over {args.hours:g} h ({args.rate:g}/s, "
          f"{args.service:g} s each at full speed), {len(clusters)} clusters "
          f"({', '.join(f'{c.name}: {c.capacity} slots' for c in clusters)}), "
          f"{sum(len(c.failures) for c in clusters)} server failures, polls every "
          f"{args.poll_interval:g} s, seed {args.seed}. {100 * nowhere / len(arrivals):.2f}% of "
          "the requests arrive while no server can answer them.\n")
    print("| policy | failed | mean latency | p99 latency | attempts per request |")
    print("|---|---:|---:|---:|---:|")
    for policy in policies:
        found = simulate(policy, clusters, arrivals, services,
                         poll_interval=args.poll_interval, first_byte=args.first_byte,
                         clock=clock)
        latencies = found.latencies or [math.nan]
        print(f"| {policy.name} | {100 * found.failed / len(arrivals):.2f}% | "
              f"{statistics.fmean(latencies):.2f} s | {percentile(latencies, 99):.1f} s | "
              f"{found.attempts / len(arrivals):.2f} |")
    print("\nLatencies are those of the requests that got an answer, from arrival to the "
          "answer's end.")


if __name__ == "__main__":
    main()
