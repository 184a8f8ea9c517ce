"""The plugin manager: built-in defaults plus everything in the entry-point group ``first_proxy``."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import pluggy

from . import __version__, hookspecs

__all__ = ["BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "get_plugin_manager", "list_plugins"]

ENTRY_POINT_GROUP = "first_proxy"

#: Default plugins shipped in the core; their hooks are ``trylast`` but for the API-key check.
BUILTIN_PLUGINS = (
    "first_proxy.builtin.api_keys",
    "first_proxy.builtin.groups",
    "first_proxy.builtin.rate_limit",
    "first_proxy.builtin.selection",
)


def get_plugin_manager(
    *,
    load_entrypoints: bool = True,
    blocked: Iterable[str] = (),
    plugins: Iterable[Any] = (),
) -> pluggy.PluginManager:
    """A fresh plugin manager: specs, then entry points (minus ``blocked``), then ``plugins``.

    ``plugins`` are extra modules or objects to register, as tests and embedders do. A name
    in ``blocked`` may be an entry-point name or a built-in module's name.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for module in BUILTIN_PLUGINS:
        if not pm.is_blocked(module):
            pm.register(importlib.import_module(module), name=module)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def list_plugins(pm: pluggy.PluginManager, *, include_builtin: bool = False) -> list[dict[str, Any]]:
    """Name, version and implemented hooks of each registered plugin."""
    versions = {
        pm.get_name(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()
    }
    rows = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        builtin = name in BUILTIN_PLUGINS
        if builtin and not include_builtin:
            continue
        hooks = sorted(
            caller.name for caller in pm.get_hookcallers(plugin) or () if caller.name
        )
        version = __version__ if builtin else versions.get(name)
        rows.append({"name": name, "version": version, "builtin": builtin,
                     "hooks": hooks})
    return sorted(rows, key=lambda row: (row["builtin"], row["name"]))
