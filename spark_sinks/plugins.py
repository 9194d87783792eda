"""Plugin discovery. Built-in plugins are found exactly as third-party ones: through
the ``spark_sinks`` entry-point group. Only the core's own sources are registered
directly, and they go through the same plugin manager and hooks.

``SPARK_SINKS_LOAD_PLUGINS`` (a comma list of entry-point or distribution names;
empty means none) pins which entry-point plugins load, e.g. to start without a
broken one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .names import RULE, valid_name

if TYPE_CHECKING:
    from .sink import Sink
    from .sources import Source

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "spark_sinks"
LOAD_ENV = "SPARK_SINKS_LOAD_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    """Entry-point name, or the module name for the core's own plugin."""
    distribution: str | None = None
    version: str | None = None
    hooks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Provided:
    """A sink or source type and the plugin that provided it (for error messages)."""

    cls: Any
    plugin: PluginInfo


@dataclass
class Registry:
    sink_types: dict[str, Provided] = field(default_factory=dict)
    source_types: dict[str, Provided] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    """Plugin name -> why it could not be loaded or run."""

    def distribution(self, plugin: str) -> str | None:
        """``"name version"`` of the distribution that installed this plugin, if any."""
        dist = _DISTS.get(plugin)
        return f"{dist[0]} {dist[1]}" if dist else None


def _wanted() -> set[str] | None:
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_DISTS: dict[str, tuple[str, str]] = {}
"""Plugin name -> (distribution, version), for plugins loaded from entry points."""


def plugin_manager(registry: Registry) -> pluggy.PluginManager:
    """Load every wanted entry-point plugin; one that fails to import is recorded
    in ``registry.broken`` with its name and the others still load."""
    pm = pluggy.PluginManager("spark_sinks")
    pm.add_hookspecs(hookspecs)
    from . import sources

    pm.register(sources, name="spark_sinks.sources")
    wanted = _wanted()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else None
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        if pm.has_plugin(ep.name):
            continue
        if ep.dist is not None:
            _DISTS[ep.name] = (ep.dist.name, ep.dist.version)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except (Exception, SystemExit) as exc:  # SystemExit: a plugin calling sys.exit()
            registry.broken[ep.name] = _describe(exc)
            log.error(
                "plugin %r (%s) failed to load: %s; set %s to skip it",
                ep.name,
                dist or ep.value,
                _describe(exc),
                LOAD_ENV,
            )
            continue
    _unknown_hooks(pm, registry)
    return pm


def _unknown_hooks(pm: pluggy.PluginManager, registry: Registry) -> None:
    """A misspelt or undecorated hook would otherwise silently never be called."""
    for plugin in pm.get_plugins():
        implemented = {c.name for c in pm.get_hookcallers(plugin) or []}
        for attr in dir(plugin):
            if attr.startswith("spark_sinks_") and attr not in implemented:
                name = pm.get_name(plugin) or repr(plugin)
                why = f"defines {attr} without @hookimpl, so it is never called"
                registry.broken.setdefault(name, why)
                log.error("plugin %r %s", name, why)
    for name, caller in vars(pm.hook).items():
        if name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
            why = f"implements unknown hook {name} (known: {', '.join(_HOOKS)})"
            registry.broken.setdefault(plugin, why)
            log.error("plugin %r %s", plugin, why)


_HOOKS = sorted(n for n in vars(hookspecs) if n.startswith("spark_sinks_"))


def _info(pm: pluggy.PluginManager, plugin: object) -> PluginInfo:
    name = pm.get_name(plugin) or repr(plugin)
    dist, version = _DISTS.get(name, (None, None))
    hooks = tuple(sorted(c.name for c in (pm.get_hookcallers(plugin) or [])))
    return PluginInfo(name, dist, version, hooks)


def _registrar(
    target: dict[str, Provided], kind: str, info: PluginInfo
) -> Callable[[type[Sink] | type[Source]], None]:
    def register(cls: type[Sink] | type[Source]) -> None:
        name = getattr(cls, "type_name", "")
        if not name:
            raise PluginError(f"{kind} class {cls!r} has no type_name")
        # it becomes a metrics label and a status-file key, as a source counter's name does
        if not valid_name(name):
            raise PluginError(f"{kind} type {name!r}: a type name is {RULE}")
        if name in target:
            other = target[name].plugin.name
            raise PluginError(f"{kind} type {name!r} is already provided by {other!r}")
        target[name] = Provided(cls, info)

    return register


def load_registry() -> Registry:
    """Discover plugins and collect what they provide.

    Each hook implementation is called on its own, so one that raises is
    reported under its plugin's name and does not hide the others.
    """
    registry = Registry()
    pm = plugin_manager(registry)
    infos = {id(p): _info(pm, p) for p in pm.get_plugins()}
    registry.plugins = sorted(infos.values(), key=lambda i: i.name)
    for hook_name, target, kind in (
        ("spark_sinks_register_sink_types", registry.sink_types, "sink"),
        ("spark_sinks_register_sources", registry.source_types, "source"),
    ):
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = infos[id(impl.plugin)]

            try:
                impl.function(register=_registrar(target, kind, info))
            except Exception as exc:
                registry.broken[info.name] = f"{hook_name} raised {_describe(exc)}"
                log.error(
                    "plugin %r (%s) raised in %s: %s; set %s to skip it",
                    info.name,
                    info.distribution or "built in",
                    hook_name,
                    _describe(exc),
                    LOAD_ENV,
                )
    return registry
