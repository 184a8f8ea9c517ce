"""OpenAI-compatible routes, under /v1/ and the FIRST-compatible /resource_server/ prefix,
and FIRST's discovery routes (list-endpoints, whoami, a cluster's jobs and models, status)."""

from __future__ import annotations

from aiohttp import hdrs, web

from ..errors import PluginError
from ..keys import GATEWAY
from . import clusters, inference, models, ops, whoami
from .errors import answers_errors, unknown_route, wrong_method
from .incoming import expect_continue, expect_no_body
from .plugin_routes import plugin_handler

__all__ = ["setup_routes"]

PREFIXES = ("/v1", "/resource_server/v1")
#: A target pinned by path: /resource_server/{cluster}/{framework}/v1/...
PINNED = "/resource_server/{cluster}/{framework}/v1"


def setup_routes(app: web.Application) -> None:
    """Every route, the plugins' after the core's; then, on each path, a 405 for the other
    methods, and a 404 for any other path."""
    router = app.router
    for prefix in (*PREFIXES, PINNED):
        for endpoint, handler in inference.HANDLERS.items():
            router.add_post(f"{prefix}/{endpoint}", handler, expect_handler=expect_continue)
    gets = {"/health": ops.health, "/metrics": ops.metrics, "/status": ops.status,
            "/resource_server/status": clusters.cluster_status,
            "/resource_server/list-endpoints": clusters.list_endpoints,
            "/resource_server/whoami": whoami.whoami}
    for prefix in PREFIXES:
        gets[f"{prefix}/models"] = models.list_models
        gets[prefix + "/models/{model:.+}"] = models.get_model
    # After the plain paths above, which win: /resource_server/v1/models is not a cluster's.
    gets["/resource_server/{cluster}/jobs"] = clusters.cluster_jobs
    gets["/resource_server/{cluster}/models"] = clusters.cluster_models
    for path, get in gets.items():
        router.add_get(path, answers_errors(get), expect_handler=expect_no_body)
    _add_plugin_routes(app)
    for resource in router.resources():
        if isinstance(resource, web.Resource):
            resource.add_route(hdrs.METH_ANY, wrong_method(route.method for route in resource),
                               expect_handler=expect_no_body)
    # Any path, newlines included (``%0A``): no request falls through to aiohttp's plain 404.
    router.add_route(hdrs.METH_ANY, "/{path:(?s:.*)}", unknown_route, expect_handler=expect_no_body)


def _add_plugin_routes(app: web.Application) -> None:
    router = app.router
    # A path the core serves is taken whatever the method; a plugin's, per method.
    core = {route.resource.canonical for route in router.routes() if route.resource is not None}
    taken: set[tuple[str, str]] = set()
    for spec in app[GATEWAY].hooks.routes():
        if spec.path in core or (spec.method, spec.path) in taken:
            raise PluginError(f"{spec.plugin} adds the route {spec.method} {spec.path}, which is "
                              "taken already; choose another path")
        taken.add((spec.method, spec.path))
        router.add_route(spec.method, spec.path, plugin_handler(spec))
