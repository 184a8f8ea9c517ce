"""``first-proxy status``: a running gateway's clusters, jobs and targets, as tables."""

from __future__ import annotations

import json
import time
import urllib.error
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
    """Show the clusters, the model jobs on them and every target, from GET /status."""
    data = _fetch(url.rstrip("/") + "/status", api_key)
    now = time.time()
    targets = [(entry.get("model", "?"), target) for entry in data.get("models", [])
               for target in entry.get("targets", [])]
    clusters: dict[str, dict[str, Any]] = {}
    for _, target in targets:
        status = target.get("status") or {}
        detail = status.get("detail") or {}
        if detail.get("scheduler") and target.get("cluster") not in clusters:
            clusters[target["cluster"]] = status
    if clusters:
        _table(["cluster", "scheduler", "state", "free nodes", "checked", "version or error"],
               [[name, s["detail"]["scheduler"], s["detail"].get("state", "?"),
                 _text(s["detail"].get("free_nodes")), _ago(s.get("checked_at"), now),
                 s.get("last_error") or s["detail"].get("version") or ""]
                for name, s in clusters.items()])
        jobs = [[name, model, state.get("state", "?"), ", ".join(state.get("jobs", [])),
                 _facts(state, now)]
                for name, s in clusters.items()
                for model, state in (s["detail"].get("models") or {}).items()]
        click.echo()
        if jobs:
            _table(["cluster", "model", "state", "jobs", "facts"], jobs)
        else:
            click.echo("No model jobs on these clusters.")
        click.echo()
    _table(["model", "target", "backend", "cluster", "state"],
           [[model, t.get("name", "?"), t.get("backend", "?"), t.get("cluster", "?"),
             _target_state(model, t.get("status"))] for model, t in targets])


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


def _target_state(model: str, status: dict[str, Any] | None) -> str:
    if status is None:
        return "not checked yet"
    scheduler = (status.get("detail") or {}).get("scheduler")
    if not status.get("reachable"):
        return f"{'unknown' if scheduler else 'down'}: {status.get('last_error') or '?'}"
    models = status.get("models") or {}
    return models.get(model, "no job") if scheduler else models.get(model) or "up"


def _ago(when: float | None, now: float, suffix: str = " ago") -> str:
    return duration(now - when) + suffix if when else "-"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
