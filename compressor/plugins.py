"""The one plugin manager of compressor.

Built-in plugins and third-party plugins load the same way: through the
``compressor`` entry-point group. ``COMPRESSOR_LOAD_PLUGINS`` (a comma-separated list
of entry-point names) restricts which of them load; an empty value loads none.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import pluggy

from compressor import hookspecs
from compressor.components import KINDS, Component
from compressor.errors import CompressorError

if TYPE_CHECKING:
    from compressor.models.adapters import ArchitectureAdapter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "compressor"
LOAD_PLUGINS_ENV = "COMPRESSOR_LOAD_PLUGINS"

_HOOK_BY_KIND = {
    "estimator": "register_estimators",
    "pruner": "register_pruners",
    "quantizer": "register_quantizers",
    "evaluator": "register_evaluators",
}


@dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    hooks: list[str]
    components: list[str]


class Registry:
    """Components and architecture adapters collected from every loaded plugin."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.architectures: list[ArchitectureAdapter] = []
        self._collect()

    def _collect(self) -> None:
        for kind, hook_name in _HOOK_BY_KIND.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or "?"
                collected: list[Component] = []
                impl.function(register=collected.append)
                for component in collected:
                    self._add(kind, replace(component, plugin=plugin_name))

        self._architecture_owners = []
        for impl in self.pm.hook.register_architectures.get_hookimpls():
            owner = self.pm.get_name(impl.plugin) or "?"
            adapters: list = []
            impl.function(register=adapters.append)
            self.architectures.extend(adapters)
            self._architecture_owners.extend((adapter, owner) for adapter in adapters)

    def _add(self, kind: str, component: Component) -> None:
        if component.kind != kind:
            raise CompressorError(
                f"plugin {component.plugin!r} registered {component.name!r} of kind "
                f"{component.kind!r} through the {kind} hook; register it through "
                f"{_HOOK_BY_KIND[component.kind]} instead"
            )
        existing = self.components[kind].get(component.name)
        if existing is not None:
            raise CompressorError(
                f"{kind} {component.name!r} is registered twice, by plugins "
                f"{existing.plugin!r} and {component.plugin!r}; uninstall one of them or "
                f"restrict loading with {LOAD_PLUGINS_ENV}"
            )
        self.components[kind][component.name] = component

    def get(self, kind: str, name: str) -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            available = ", ".join(sorted(self.components[kind])) or "none"
            raise CompressorError(
                f"unknown {kind} {name!r}; available: {available}. "
                "Run `compressor plugins` to see what each installed plugin provides."
            ) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def plugin_infos(self) -> list[PluginInfo]:
        dists = getattr(self.pm, "compressor_dists", {})
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            components = [
                f"{c.kind}:{c.name}" for kind in KINDS for c in self.components[kind].values() if c.plugin == name
            ]
            components += [f"architecture:{a.name}" for a, owner in self._architecture_owners if owner == name]
            package, version = dists.get(name, ("?", "?"))
            infos.append(PluginInfo(name, package, version, hooks, sorted(components)))
        return sorted(infos, key=lambda info: info.name)


def _allowed_names() -> set[str] | None:
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def create_plugin_manager() -> pluggy.PluginManager:
    """Build a plugin manager with every allowed plugin of the entry-point group.

    The package and version of each plugin are kept in ``pm.compressor_dists``.
    """
    pm = pluggy.PluginManager("compressor")
    pm.add_hookspecs(hookspecs)
    pm.compressor_dists = {}

    allowed = _allowed_names()
    found = set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        dist = entry_point.dist
        package = dist.metadata["Name"] if dist else "?"
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise CompressorError(
                f"plugin {entry_point.name!r} from package {package!r} failed to import "
                f"({type(exc).__name__}: {exc}); reinstall or uninstall that package, or leave it "
                f"out with {LOAD_PLUGINS_ENV}=NAME,NAME"
            ) from exc
        pm.register(plugin, name=entry_point.name)
        pm.compressor_dists[entry_point.name] = (package, dist.version if dist else "?")
        found.add(entry_point.name)

    if allowed is not None and allowed - found:
        log.warning(
            "%s names plugins that are not installed: %s",
            LOAD_PLUGINS_ENV,
            ", ".join(sorted(allowed - found)),
        )
    return pm


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """Return the process-wide registry, built on first use."""
    return Registry(create_plugin_manager())


def reset_registry() -> None:
    """Forget the cached registry, so the next call reloads plugins (used by tests)."""
    get_registry.cache_clear()
