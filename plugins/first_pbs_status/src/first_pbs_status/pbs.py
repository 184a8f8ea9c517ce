"""PBS Pro and OpenPBS, version 19 and later: ``qstat -f -F json`` and ``pbsnodes -a -F json``.

What differs between versions, from OpenPBS's own history:

- Times (``qtime``, ``stime``, ``estimated.start_time``) are ``ctime()`` strings in the local
  time of the host that ran ``qstat`` (``"Tue Jan  6 09:15:02 2026"``), in every version.
- Any value that reads as a number is printed as one: ``Exit_status``, ``Resource_List.nodect``,
  ``Variable_List`` entries, and ``Job_Name`` too until OpenPBS 2026 (#2704).
- Until OpenPBS 23.06 (#2603) "reads as a number" meant "C's ``strtod`` accepts it", so a
  value such as ``.9``, ``+1`` or ``inf`` was printed bare, which is not valid JSON; such
  output is read by quoting those values back (:func:`quote_bare_values`).
- ``Variable_List`` is an object of the job's environment entries (``qsub -v``).
- Array jobs: the parent ``123[].server`` (state ``B`` once a subjob began, with
  ``array_state_count``); with ``qstat -t`` its subjobs ``123[4].server`` too.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, tzinfo
from typing import Any

from .jobs import FAILED, HELD, QUEUED, RUNNING, Job
from .reading import OutputError, as_text, mapping, read_json

__all__ = ["parse_pbsnodes", "parse_qstat", "quote_bare_values"]

#: The oldest PBS whose JSON this module reads.
OLDEST = 19
_STATES = {"R": RUNNING, "Q": QUEUED, "W": QUEUED, "T": QUEUED, "H": HELD, "S": HELD, "U": HELD}
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_CTIME = re.compile(r"^\w{3} (\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) (\d{4})$")
_COUNTS = re.compile(r"(\w+):(\d+)")


def parse_qstat(text: str, *, tz: tzinfo | None = None,
                what: str = "qstat") -> tuple[list[Job], str]:
    """The jobs in ``qstat -f -F json`` output, and the PBS version it names.

    ``tz`` is the time zone of the host ``qstat`` ran on (``None``: this host's). Jobs that
    ended are left out; a finished job (``qstat -x``) is kept only if it failed.
    """
    data = read_json(text, what, repair=quote_bare_values)
    version = _version(data, what)
    listed = mapping(data.get("Jobs", {}), f"{what}'s Jobs")
    split = {as_text(mapping(a, f"{what}'s Jobs[{i!r}]").get("array_id"))
             for i, a in listed.items()}
    jobs = []
    for job_id, attrs in listed.items():
        if job_id in split:  # an array parent whose subjobs are listed: they say more
            continue
        job = _job(job_id, attrs, tz)
        if job is not None:
            jobs.append(job)
    return jobs, f"PBS {version}"


def parse_pbsnodes(text: str, *, what: str = "pbsnodes") -> int:
    """How many nodes ``pbsnodes -a -F json`` lists as ``free``."""
    data = read_json(text, what, repair=quote_bare_values)
    _version(data, what)
    nodes = mapping(data.get("nodes", {}), f"{what}'s nodes")
    return sum(1 for name, attrs in nodes.items()
               if as_text(mapping(attrs, f"{what}'s nodes[{name!r}]").get("state")) == "free")


def _version(data: dict[str, Any], what: str) -> str:
    version = as_text(data.get("pbs_version"))
    major = re.match(r"\d+", version)
    if major is None:
        raise OutputError(f"{what} printed JSON without a pbs_version: is it PBS's {what}?")
    if int(major.group()) < OLDEST:
        raise OutputError(f"{what} is PBS {version}, older than the PBS {OLDEST} whose JSON "
                          "first_pbs_status reads")
    return version


def _job(job_id: str, attrs: dict[str, Any], tz: tzinfo | None) -> Job | None:
    letter = as_text(attrs.get("job_state"))
    state = _STATES.get(letter)
    if letter == "B":
        state = _array_state(as_text(attrs.get("array_state_count")))
    elif letter == "F" and _exit_status(attrs.get("Exit_status")):
        state = FAILED
    if state is None:
        return None
    resources = attrs.get("Resource_List")
    nodes = resources.get("nodect") if isinstance(resources, dict) else None
    estimated = attrs.get("estimated")
    variables = attrs.get("Variable_List")
    comment = as_text(attrs.get("comment"))
    return Job(
        id=job_id,
        name=as_text(attrs.get("Job_Name")),
        state=state,
        queue=as_text(attrs.get("queue")),
        user=as_text(attrs.get("Job_Owner")).split("@", 1)[0],
        submitted=_time(attrs.get("qtime"), tz),
        started=_time(attrs.get("stime"), tz),
        expected_start=(_time(estimated.get("start_time"), tz)
                        if isinstance(estimated, dict) else None),
        nodes=nodes if isinstance(nodes, int) and not isinstance(nodes, bool) else None,
        comment=comment,
        reason=comment,
        attributes=({str(k): as_text(v) for k, v in variables.items()}
                    if isinstance(variables, dict) else {}),
    )


def _array_state(counts: str) -> str | None:
    found = {name: int(n) for name, n in _COUNTS.findall(counts)}
    if found.get("Running"):
        return RUNNING
    return QUEUED if found.get("Queued") else None


def _exit_status(value: Any) -> bool:
    """Whether a finished job's ``Exit_status`` says it failed."""
    try:
        return int(as_text(value) or 0) != 0
    except ValueError:
        return True


def _time(value: Any, tz: tzinfo | None) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) or None
    found = _CTIME.match(as_text(value).strip())
    if found is None or found.group(1) not in _MONTHS:
        return None
    month, day, hour, minute, second, year = found.groups()
    try:
        when = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute),
                        int(second), tzinfo=tz)
    except ValueError:
        return None
    return when.timestamp()


_MEMBER = re.compile(r'^(\s*"(?:[^"\\\n]|\\.)*"\s*:)(.*?)(,?)$', re.MULTILINE)
_JSON_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")


def quote_bare_values(text: str) -> str:
    """``text`` with the bare non-JSON values older PBS prints (``"x":.9``) made strings.

    PBS prints one member per line, so a member whose value is neither a JSON scalar, a string
    nor the start of an object or list is one of those, and is quoted as it stands.
    """

    def fix(found: re.Match[str]) -> str:
        key, value, comma = found.groups()
        bare = value.strip()
        if bare[:1] in ('"', "{", "[") or _JSON_SCALAR.fullmatch(bare):
            return found.group()
        return f"{key}{json.dumps(bare)}{comma}"

    return _MEMBER.sub(fix, text)
