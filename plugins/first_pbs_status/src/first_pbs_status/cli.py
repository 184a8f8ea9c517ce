"""``first-proxy status``: a running gateway's clusters, jobs and targets, as tables."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from .jobs import duration

__all__ = ["status_command"]


@click.command("status")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="FIRST_PROXY_URL",
              help="The gateway's address (or set FIRST_PROXY_URL).")
@click.option("--api-key", envvar="FIRST_PROXY_API_KEY", required=True,
              help="A key the gateway accepts (or set FIRST_PROXY_API_KEY).")
def status_command(url: str, api_key: str) -> None:
    """Show the clusters, the model jobs on them and every target, as the gateway sees them
    (GET /resource_server/status, /resource_server/{cluster}/jobs and /status)."""
    base = url.rstrip("/")
    now = time.time()
    clusters = _fetch(f"{base}/resource_server/status", api_key).get("clusters", {})
    if clusters:
        _table(["cluster", "state", "scheduler", "free nodes", "checked",
                "maintenance, version or error"],
               [[name, c.get("state", "?"), c.get("scheduler") or "-", _text(c.get("free_nodes")),
                 _ago(c.get("checked_at"), now),
                 c.get("maintenance") or c.get("last_error") or c.get("version") or ""]
                for name, c in clusters.items()])
        click.echo()
    jobs = []
    for name, cluster in clusters.items():
        if not cluster.get("scheduler"):
            continue
        found = _fetch(f"{base}/resource_server/{urllib.parse.quote(name, safe='')}/jobs",
                       api_key)
        jobs += [[name, entry["model"], entry["state"], ", ".join(entry.get("jobs", [])),
                  _facts(entry, now)]
                 for bucket in ("running", "starting", "queued", "stopped", "unknown")
                 for entry in found.get(bucket, [])]
    if jobs:
        _table(["cluster", "model", "state", "jobs", "facts"], jobs)
        click.echo()
    models = _fetch(f"{base}/status", api_key).get("models", [])
    _table(["model", "target", "backend", "cluster", "state", "cool-down"],
           [[entry.get("model", "?"), t.get("name", "?"), t.get("backend", "?"),
             t.get("cluster", "?"), t.get("state", "?"), _cooldown(t.get("cooldown"))]
            for entry in models for t in entry.get("targets", [])])


def _fetch(url: str, api_key: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        raise click.ClickException(f"{url} answered {e.code}: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise click.ClickException(f"cannot reach {url}: {reason}. Is the gateway running "
                                   "there? (--url or FIRST_PROXY_URL)") from None
    except ValueError:
        raise click.ClickException(f"{url} did not answer JSON: is it a first-proxy?") from None


def _facts(state: dict[str, Any], now: float) -> str:
    nodes = f" on {state['nodes']} node(s)" if state.get("nodes") else ""
    if state.get("state") in ("running", "starting"):
        return f"for {_ago(state.get('since'), now, suffix='')}{nodes}"
    if state.get("state") == "queued":
        where = f"position {state['queue_position']}, " if state.get("queue_position") else ""
        return f"{where}waiting {_ago(state.get('since'), now, suffix='')}"
    return state.get("reason") or ""


def _cooldown(cooldown: dict[str, Any] | None) -> str:
    if not cooldown:
        return ""
    left = cooldown.get("cooldown_left") or 0
    failures = f"{cooldown.get('failures', '?')} failure(s) in a row"
    return f"{failures}, retried in {duration(left)}" if left else failures


def _ago(when: float | None, now: float, suffix: str = " ago") -> str:
    return duration(now - when) + suffix if when else "-"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
