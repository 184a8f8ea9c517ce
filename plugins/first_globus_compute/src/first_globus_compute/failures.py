"""What went wrong on the way through Globus Compute, in words a caller can act on.

A caller never sees a remote traceback: the log gets it, the caller gets its last line.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from dataclasses import dataclass

__all__ = ["Failure", "describe"]

log = logging.getLogger("first_globus_compute")

_OVERSIZE = re.compile(r"MaxResultSizeExceeded\D*(\d+)\D+(\d+)")


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    #: The failure is the service's or the executor's, not the task's: start a new executor.
    replace_executor: bool


def describe(error: BaseException, where: str) -> Failure:
    """``error`` from a Compute future or submission, for the task sent to ``where``."""
    import globus_sdk
    from globus_compute_sdk.errors import TaskExecutionFailed

    if isinstance(error, TaskExecutionFailed):
        oversize = _OVERSIZE.search(error.remote_data)
        if oversize:
            size, limit = map(int, oversize.groups())
            return Failure(f"the answer ({_mib(size)}) is larger than the endpoint lets a "
                           f"result be ({_mib(limit)}); ask for fewer tokens or inputs", False)
        log.warning("Globus Compute task on %s failed:\n%s", where, error.remote_data)
        return Failure(f"the function failed on the endpoint ({_last_line(error.remote_data)})",
                       False)
    if isinstance(error, globus_sdk.GlobusAPIError):
        return Failure(f"Globus Compute refused the task (HTTP {error.http_status}: "
                       f"{error.message or error.code})", True)
    if isinstance(error, globus_sdk.NetworkError):
        return Failure(f"cannot reach Globus Compute ({error})", True)
    if isinstance(error, concurrent.futures.CancelledError):
        return Failure("the submission was dropped when its executor stopped", True)
    log.warning("Globus Compute failed for %s", where, exc_info=error)
    return Failure(f"Globus Compute failed ({type(error).__name__}: {error})"[:300], True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no details")[:200]


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
