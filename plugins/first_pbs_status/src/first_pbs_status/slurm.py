"""Slurm: ``squeue --json`` and ``sinfo --json``, data_parser versions v0.0.37 to v0.0.41.

What differs between versions, from Slurm's sources:

- v0.0.37 (Slurm 21.08) and v0.0.38 (22.05) come from the openapi plugins: ``meta.plugin.type``
  names the version, ``job_state`` is a string, numbers and times are plain integers, and
  ``sinfo`` lists ``nodes`` (``state: "idle"``, ``state_flags: ["DRAIN"]``).
- v0.0.39 (23.02), the first data_parser: ``meta.plugins.data_parser`` names it; times stay
  integers, but counts, priorities and array ids become ``{"set", "infinite", "number"}``
  objects; ``sinfo`` lists node groups under ``sinfo`` (``node.state: ["IDLE"]``).
- v0.0.40 (23.11) and v0.0.41 (24.05): ``meta.plugin.data_parser``; ``job_state`` is a list
  (``["RUNNING", "CONFIGURING"]``) and times are ``{"set", ...}`` objects too.

Newer Slurm releases still write v0.0.41 when asked: ``squeue --json=v0.0.41``.
"""

from __future__ import annotations

import re
from typing import Any

from .jobs import FAILED, HELD, QUEUED, RUNNING, STARTING, Job
from .reading import OutputError, as_text, mapping, read_json

__all__ = ["SUPPORTED", "parse_sinfo", "parse_squeue"]

SUPPORTED = ("v0.0.37", "v0.0.38", "v0.0.39", "v0.0.40", "v0.0.41")

_ENDING = frozenset({"COMPLETING", "STAGE_OUT"})
_FAILED = frozenset({"FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "LAUNCH_FAILED"})
_HELD = frozenset({"REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"})
_BOOTING = frozenset({"CONFIGURING", "POWER_UP_NODE"})
_WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED"})
#: Node flags that keep an idle node from taking a job now.
_UNAVAILABLE = frozenset({"DRAIN", "MAINTENANCE", "RESERVED", "NOT_RESPONDING", "FAIL",
                          "POWERING_DOWN", "POWER_DOWN", "REBOOT_REQUESTED", "REBOOT_ISSUED",
                          "PLANNED", "INVALID_REG"})
_PAIR = re.compile(r"([\w.-]+)=([^\s,;]+)")


def parse_squeue(text: str, *, what: str = "squeue") -> tuple[list[Job], str]:
    """The jobs in ``squeue --json`` output, and the Slurm version it names.

    Jobs that ended are left out, but for those that failed (Slurm keeps them for
    ``MinJobAge`` seconds).
    """
    data = read_json(text, what)
    version = _version(data, what, "squeue")
    listed = data.get("jobs")
    if not isinstance(listed, list):
        raise OutputError(f"{what} printed no jobs list{_errors(data)}")
    jobs = []
    for i, raw in enumerate(listed):
        job = _job(mapping(raw, f"{what}'s jobs[{i}]"))
        if job is not None:
            jobs.append(job)
    return jobs, version


def parse_sinfo(text: str, *, what: str = "sinfo") -> int:
    """How many nodes ``sinfo --json`` shows idle and free to take a job."""
    data = read_json(text, what)
    _version(data, what, "sinfo")
    if isinstance(data.get("sinfo"), list):  # v0.0.39 and later: node groups
        free: set[str] = set()
        unnamed = 0
        for i, group in enumerate(data["sinfo"]):
            group = mapping(group, f"{what}'s sinfo[{i}]")
            states = _flags((group.get("node") or {}).get("state"))
            if "IDLE" not in states or states & _UNAVAILABLE:
                continue
            nodes = mapping(group.get("nodes") or {}, f"{what}'s sinfo[{i}].nodes")
            names = nodes.get("nodes") or nodes.get("hostnames")
            if isinstance(names, list) and names:
                free.update(map(as_text, names))
            else:
                unnamed += int(_number(nodes.get("idle")) or 0)
        return len(free) + unnamed
    if isinstance(data.get("nodes"), list):  # v0.0.37 and v0.0.38: one entry per node
        return sum(1 for i, node in enumerate(data["nodes"])
                   if _node_free(mapping(node, f"{what}'s nodes[{i}]")))
    raise OutputError(f"{what} printed neither sinfo nor nodes{_errors(data)}")


def _version(data: dict[str, Any], what: str, tool: str) -> str:
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise OutputError(f"{what} printed JSON without meta: is it Slurm's {tool} --json?")
    plugin, plugins = meta.get("plugin") or {}, meta.get("plugins") or {}
    name = (as_text(plugin.get("data_parser")) or as_text(plugins.get("data_parser"))
            or as_text(plugin.get("type")))
    version = name.rsplit("/", 1)[-1]
    release = as_text((meta.get("slurm") or meta.get("Slurm") or {}).get("release"))
    if version not in SUPPORTED:
        shown = version or "an unnamed version"
        raise OutputError(
            f"{what} printed the JSON of data_parser {shown}; first_pbs_status reads "
            f"{SUPPORTED[0]} to {SUPPORTED[-1]}. Ask for one of those, e.g. "
            f"{tool}_command: [{tool}, --json={SUPPORTED[-1]}]")
    return f"Slurm {release} (data_parser {version})" if release else f"Slurm ({version})"


def _job(raw: dict[str, Any]) -> Job | None:
    flags = _flags(raw.get("job_state"))
    reason = as_text(raw.get("state_reason"))
    reason = "" if reason == "None" else reason
    priority = _number(raw.get("priority"))
    state = _state(flags, reason, raw.get("hold") is True or priority == 0)
    if state is None:
        return None
    pending = state in (QUEUED, HELD)
    start = _number(raw.get("start_time")) or None
    comment = as_text(raw.get("comment"))
    description = as_text(raw.get("state_description"))
    return Job(
        id=_job_id(raw),
        name=as_text(raw.get("name")),
        state=state,
        queue=as_text(raw.get("partition")),
        user=as_text(raw.get("user_name")),
        submitted=_number(raw.get("submit_time")) or None,
        started=None if pending else start,
        expected_start=start if pending else None,
        nodes=_count(raw.get("node_count")),
        priority=priority,
        comment=comment,
        reason=": ".join(part for part in (reason, description) if part),
        attributes={"comment": comment, **dict(_PAIR.findall(comment))} if comment else {},
    )


def _state(flags: frozenset[str], reason: str, held: bool) -> str | None:
    if flags & _ENDING:
        return None
    if flags & _FAILED:
        return FAILED
    if flags & _HELD:
        return HELD
    if flags & _BOOTING:
        return STARTING
    if "RUNNING" in flags:
        return RUNNING
    if flags & _WAITING:
        return HELD if held or reason.startswith("JobHeld") else QUEUED
    return None


def _job_id(raw: dict[str, Any]) -> str:
    array = _count(raw.get("array_job_id"))
    if array:
        task = _number(raw.get("array_task_id"))
        if task is not None:
            return f"{array}_{int(task)}"
        tasks = as_text(raw.get("array_task_string"))
        if tasks:
            return f"{array}_[{tasks}]"
    return as_text(raw.get("job_id"))


def _node_free(node: dict[str, Any]) -> bool:
    flags = _flags(node.get("state_flags"))
    return as_text(node.get("state")).upper() == "IDLE" and not flags & _UNAVAILABLE


def _flags(value: Any) -> frozenset[str]:
    """A state as a set of names: v0.0.40 and later give a list, older versions one string."""
    if isinstance(value, list):
        return frozenset(as_text(v).upper() for v in value)
    return frozenset({as_text(value).upper()}) if value else frozenset()


def _number(value: Any) -> float | None:
    """A plain number (v0.0.38 and older) or ``{"set": true, "number": n}`` (v0.0.39 and later)."""
    if isinstance(value, dict):
        if not value.get("set") or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _errors(data: dict[str, Any]) -> str:
    """The first of the errors Slurm put in its JSON, as ``: why``; empty when none."""
    errors = data.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return ": " + (as_text(first.get("description")) or as_text(first.get("error")))
    return ""
