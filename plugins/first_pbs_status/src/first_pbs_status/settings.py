"""The ``clusters:`` entries this plugin watches (``status: pbs`` or ``status: slurm``), checked.

Only the keys listed here are read; a cluster entry may hold keys of other plugins too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from first_proxy import GatewayConfig, Target

from .jobs import ModelNames, ModelRules

__all__ = [
    "DEFAULT_JOB_NAME_PATTERN",
    "ClusterSettings",
    "ColdStartSettings",
    "check_files",
    "read_clusters",
]

SCHEDULERS = ("pbs", "slurm")
DEFAULT_JOB_NAME_PATTERN = r"^first-(?P<model>.+)$"
#: Per scheduler: the key of each command and its default.
COMMANDS = {
    "pbs": {"jobs": ("qstat_command", ("qstat", "-f", "-F", "json")),
            "nodes": ("pbsnodes_command", ("pbsnodes", "-a", "-F", "json")),
            "submit": ("qsub_command", ("qsub",))},
    "slurm": {"jobs": ("squeue_command", ("squeue", "--json")),
              "nodes": ("sinfo_command", ("sinfo", "--json")),
              "submit": ("sbatch_command", ("sbatch",))},
}
_OTHER = {"pbs": "slurm", "slurm": "pbs"}
_COLD_START_KEYS = {"template", "models", "claim_ttl", "retry_after"}


@dataclass(frozen=True)
class ColdStartSettings:
    """``clusters.<name>.cold_start``: the job that starts a model there."""

    #: A job script; ``{model}`` becomes the model's name, ``{model_basename}`` the part after
    #: its last ``/``.
    template: Path
    #: The models it may start (their upstream names); empty: every model served there.
    models: frozenset[str] = frozenset()
    #: Seconds a submission is claimed for: no second job for the model there meanwhile,
    #: until the scheduler lists the first.
    claim_ttl: float = 600.0
    #: Seconds callers are told to wait before they retry.
    retry_after: float = 60.0


@dataclass(frozen=True)
class ClusterSettings:
    name: str
    scheduler: str
    poll_interval: float
    #: Seconds each command may take.
    timeout: float
    jobs_command: tuple[str, ...]
    #: ``None``: the free nodes are not asked for.
    nodes_command: tuple[str, ...] | None
    submit_command: tuple[str, ...]
    rules: ModelRules
    names: ModelNames
    #: IANA name of the PBS host's time zone (PBS prints local times); ``None``: this host's.
    timezone: str | None = None
    cold_start: ColdStartSettings | None = None
    #: Where the commands run: ``local`` (by subprocess, here) or ``globus_compute`` (on the
    #: cluster, through the registered ``status_function`` on its Compute ``endpoint``).
    via: str = "local"
    endpoint: str | None = None
    status_function: str | None = None


def read_clusters(config: GatewayConfig) -> tuple[list[ClusterSettings], list[tuple[str, str]]]:
    """The clusters this plugin watches, and every problem with their settings."""
    clusters, problems = [], []
    for name, entry in config.clusters.items():
        if entry.get("status") in SCHEDULERS:
            reader = _Reader(f"clusters.{name}", problems)
            cluster = _cluster(str(name), entry, config, reader)
            if cluster is not None:
                clusters.append(cluster)
    return clusters, problems


class _Reader:
    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        self.count = len(problems)

    def problem(self, key: str, message: str) -> None:
        self.problems.append((f"{self.path}.{key}", message))

    @property
    def clean(self) -> bool:
        return len(self.problems) == self.count

    def number(self, entry: Mapping[str, Any], key: str, default: float, *,
               zero: bool = False) -> float:
        """Seconds: a number > 0 (>= 0 with ``zero``)."""
        value = entry.get(key, default)
        if isinstance(value, str):  # from ${VAR}
            with contextlib.suppress(ValueError):
                value = float(value)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or value < 0 or (value == 0 and not zero)):
            self.problem(key, f"expected a number of seconds {'>=' if zero else '>'} 0, "
                              f"got {value!r}")
            return default
        return float(value)

    def command(self, entry: Mapping[str, Any], key: str,
                default: tuple[str, ...]) -> tuple[str, ...]:
        value = entry.get(key, list(default))
        if (not isinstance(value, list) or not value
                or not all(isinstance(word, str) and word for word in value)):
            self.problem(key, f"expected the command as a list of words, e.g. "
                              f"[ssh, login1, {', '.join(default)}]; got {value!r}")
            return default
        return tuple(value)

    def pattern(self, entry: Mapping[str, Any], key: str, default: str | None,
                group: str | None = None) -> re.Pattern[str] | None:
        value = entry.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, f"expected a regular expression, got {value!r}")
            return None
        try:
            compiled = re.compile(value)
        except re.error as e:
            self.problem(key, f"not a valid regular expression: {e}")
            return None
        if group is not None and group not in compiled.groupindex:
            self.problem(key, f"needs a named group (?P<{group}>...) that matches the model's "
                              f"name, e.g. {DEFAULT_JOB_NAME_PATTERN}")
            return None
        return compiled

    def text(self, entry: Mapping[str, Any], key: str) -> str | None:
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            self.problem(key, f"expected a non-empty string, got {value!r}")
            return None
        return value


def _cluster(name: str, entry: Mapping[str, Any], config: GatewayConfig,
             r: _Reader) -> ClusterSettings | None:
    scheduler = entry["status"]
    commands = COMMANDS[scheduler]
    for key, _ in COMMANDS[_OTHER[scheduler]].values():
        if key in entry:
            r.problem(key, f"is for status: {_OTHER[scheduler]}; this cluster has status: "
                           f"{scheduler} (use {commands['jobs'][0]}, {commands['nodes'][0]}, "
                           f"{commands['submit'][0]})")
    via = entry.get("via", "local")
    endpoint = function = None
    if via == "globus_compute":
        endpoint, function = r.text(entry, "endpoint"), r.text(entry, "status_function")
        if endpoint is None or function is None:
            r.problem("via", "through Globus Compute the cluster needs endpoint (its Compute "
                             "endpoint's UUID) and status_function (the scheduler_status "
                             "function `first-globus-compute register` printed)")
        if "first_globus_compute" not in config.plugins:
            r.problem("via", "needs the first_globus_compute plugin and its settings "
                             "(plugins.first_globus_compute: client_id, client_secret)")
    elif via != "local":
        r.problem("via", f"expected local or globus_compute, got {via!r}")
    if scheduler == "slurm" and "timezone" in entry:
        r.problem("timezone", "only PBS prints local times; Slurm's are UNIX times")
    nodes_key, nodes_default = commands["nodes"]
    nodes: tuple[str, ...] | None = None
    if entry.get(nodes_key, nodes_default) not in ([], False):
        nodes = r.command(entry, nodes_key, nodes_default)
    targets = [t for t in config.targets() if t.cluster == name]
    names = ModelNames(targets)
    rules = ModelRules(
        job_name_pattern=r.pattern(entry, "job_name_pattern", DEFAULT_JOB_NAME_PATTERN,
                                   group="model") or re.compile(DEFAULT_JOB_NAME_PATTERN),
        model_attribute=r.text(entry, "model_attribute"),
        job_user=r.text(entry, "job_user"),
        warm_up=r.number(entry, "warm_up", 0.0, zero=True),
        ready_comment=r.pattern(entry, "ready_comment", None),
    )
    settings = ClusterSettings(
        name=name, scheduler=scheduler,
        poll_interval=r.number(entry, "poll_interval", 30.0),
        timeout=r.number(entry, "timeout", 30.0),
        jobs_command=r.command(entry, *commands["jobs"]),
        nodes_command=nodes,
        submit_command=r.command(entry, *commands["submit"]),
        rules=rules, names=names,
        timezone=r.text(entry, "timezone") if scheduler == "pbs" else None,
        cold_start=_cold_start(entry, config, names, targets, r),
        via=via, endpoint=endpoint, status_function=function,
    )
    return settings if r.clean else None


def _cold_start(entry: Mapping[str, Any], config: GatewayConfig, names: ModelNames,
                targets: list[Target], r: _Reader) -> ColdStartSettings | None:
    raw = entry.get("cold_start")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.problem("cold_start", f"expected a mapping with at least template, got {raw!r}")
        return None
    r = _Reader(f"{r.path}.cold_start", r.problems)
    for key in raw:
        if key not in _COLD_START_KEYS:
            r.problem(key, f"unknown key; expected one of: {', '.join(sorted(_COLD_START_KEYS))}")
    template = raw.get("template")
    if not isinstance(template, str) or not template:
        r.problem("template", "required: the path of the job script that starts a model "
                              "({model} is replaced by its name)")
        template = ""
    served = {t.upstream_model for t in targets}
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        r.problem("models", f"expected a list of model names, got {models!r}")
        models = []
    for model in models:
        if names.resolve(model) not in served:
            r.problem("models", f"{model!r} has no target on this cluster "
                                f"(served here: {', '.join(sorted(served)) or 'none'})")
    base = Path(config.source).parent
    return ColdStartSettings(
        template=base / template,
        models=frozenset(names.resolve(m) for m in models),
        claim_ttl=r.number(raw, "claim_ttl", 600.0),
        retry_after=r.number(raw, "retry_after", 60.0),
    )


def check_files(cluster: ClusterSettings) -> list[tuple[str, str]]:
    """What start-up finds wrong beyond the file's own text: time zone, job template."""
    problems = []
    path = f"clusters.{cluster.name}"
    if cluster.timezone is not None:
        try:
            ZoneInfo(cluster.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append((f"{path}.timezone", f"unknown time zone {cluster.timezone!r}; "
                                                 "give an IANA name such as America/Chicago"))
    if cluster.cold_start is not None and not cluster.cold_start.template.is_file():
        problems.append((f"{path}.cold_start.template",
                         f"{cluster.cold_start.template} is not a readable file"))
    return problems
