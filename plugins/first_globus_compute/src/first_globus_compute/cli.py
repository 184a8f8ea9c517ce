"""``first-globus-compute``: the site administrator's command line.

``first-globus-compute register`` registers the remote functions with Globus Compute as the
service account and prints the lines to paste into the endpoint's configuration and into
gateway.yaml.
"""

from __future__ import annotations

import functools
from typing import Any

import click
import yaml

from . import remote
from .executors import serializer, service_client
from .settings import BACKEND, NAME

__all__ = ["cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """first-globus-compute: Globus Compute for first-proxy."""


@cli.command()
@click.option("--client-id", envvar="GLOBUS_COMPUTE_CLIENT_ID", required=True,
              help="The service account's client id (or set GLOBUS_COMPUTE_CLIENT_ID).")
@click.option("--client-secret", envvar="GLOBUS_COMPUTE_CLIENT_SECRET", required=True,
              help="Its secret (or set GLOBUS_COMPUTE_CLIENT_SECRET).")
@click.option("--endpoint", default="<endpoint-uuid>", show_default=True,
              help="The Globus Compute endpoint beside the inference server.")
@click.option("--model", default="<model-name>", show_default=True,
              help="The model the inference server serves, as callers will name it.")
@click.option("--cluster", default="<cluster>", show_default=True,
              help="The cluster's name in gateway.yaml.")
@click.option("--api-port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="The inference server's port on the compute node.")
@click.option("--callback-url", default="https://<this gateway's public address>",
              show_default=True, help="The gateway's own public base URL, for streaming.")
@click.pass_context
def register(ctx: click.Context, client_id: str, client_secret: str, endpoint: str, model: str,
             cluster: str, api_port: int, callback_url: str) -> None:
    """Register the inference and scheduler-status functions; print the lines to paste."""
    import globus_sdk

    make_client = (ctx.obj or {}).get("make_client") or functools.partial(
        service_client, client_id, client_secret)
    try:
        client = make_client()
        client.fx_serializer = serializer()  # functions travel as their source text
        inference = client.register_function(remote.inference)
        status = client.register_function(remote.scheduler_status)
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
        raise click.ClickException(f"Globus Compute did not register the functions: {e}") from None
    click.echo(_instructions(inference, status, endpoint=endpoint, model=model, cluster=cluster,
                             api_port=api_port, callback_url=callback_url))


def _instructions(inference: str, status: str, **site: Any) -> str:
    endpoint_config = {"allowed_functions": [inference, status]}
    gateway = {
        "plugins": {NAME: {"client_id": "${GLOBUS_COMPUTE_CLIENT_ID}",
                           "client_secret": "${GLOBUS_COMPUTE_CLIENT_SECRET}",
                           "callback_url": site["callback_url"]}},
        "models": {site["model"]: {"targets": [{
            "name": site["cluster"], "backend": BACKEND, "cluster": site["cluster"],
            "endpoint": site["endpoint"], "function": inference, "api_port": site["api_port"]}]}},
    }
    return "\n".join([
        "# Registered with Globus Compute:",
        f"#   inference         {inference}",
        f"#   scheduler_status  {status}  (for the cluster's scheduler status)",
        "#",
        "# 1. Let the endpoint run them: in its config.yaml,",
        yaml.safe_dump(endpoint_config, sort_keys=False).rstrip(),
        "#",
        "# 2. Tell the gateway: in gateway.yaml (the secrets come from the environment),",
        yaml.safe_dump(gateway, sort_keys=False).rstrip(),
    ])
