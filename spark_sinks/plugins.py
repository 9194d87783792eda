"""Plugin discovery. Built-in plugins are found exactly as third-party ones: through
the ``spark_sinks`` entry-point group. Only the core's own sources are registered
directly, and they go through the same plugin manager and hooks.

``SPARK_SINKS_LOAD_PLUGINS`` (a comma list of entry-point or distribution names;
empty means none) pins which entry-point plugins may load, e.g. to start without a
broken one.

A run, check or reload loads only what its config names (``Registry.require``):
the entry points named after a configured type (``T``, or ``T_sink`` / ``T_source``),
and every other one only if a type is still unknown then. Importing a plugin can
cost more than the rest of the start (botocore, protobuf), and a broken plugin the
config does not use then cannot get in the way. ``spark-sinks plugins`` loads all.
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


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("spark_sinks")
    pm.add_hookspecs(hookspecs)
    return pm


@dataclass(frozen=True)
class Needed:
    """The sink and source types a config names."""

    sinks: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.sinks or self.sources)


@dataclass
class Registry:
    """What the loaded plugins provide. Owned by the thread that loads configs (the
    pipeline thread of a run, which also applies reloads): ``require`` may add to it."""

    sink_types: dict[str, Provided] = field(default_factory=dict)
    source_types: dict[str, Provided] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    """Plugin name -> why it could not be loaded or run."""
    pm: pluggy.PluginManager = field(default_factory=_new_manager, repr=False)
    unloaded: list[metadata.EntryPoint] = field(default_factory=list, repr=False)
    """Wanted entry points not loaded yet (``require`` loads them when a config needs them)."""

    def distribution(self, plugin: str) -> str | None:
        """``"name version"`` of the distribution that installed this plugin, if any."""
        dist = _DISTS.get(plugin)
        return f"{dist[0]} {dist[1]}" if dist else None

    def missing(self, needed: Needed) -> Needed:
        return Needed(
            needed.sinks - self.sink_types.keys(), needed.sources - self.source_types.keys()
        )

    def require(self, needed: Needed) -> None:
        """Load the plugins that provide these types: first the entry points named after
        a missing type; if one is still missing, every other one, so that a plugin named
        differently still works and an "unknown type" error lists every installed type."""
        missing = self.missing(needed)
        if missing and self.unloaded:
            names = _entry_point_names(missing)
            self._load([ep for ep in self.unloaded if ep.name in names])
        if self.missing(needed) and self.unloaded:
            self.load_all()

    def load_all(self) -> None:
        self._load(list(self.unloaded))

    def _load(self, eps: list[metadata.EntryPoint]) -> None:
        for ep in eps:
            self.unloaded.remove(ep)
        self.collect(_load_entry_points(self.pm, eps, self))

    def collect(self, new: list[object]) -> None:
        """Register what these newly registered plugins provide. Each hook implementation is
        called on its own, so one that raises is reported under its plugin's name and
        does not hide the others."""
        _unknown_hooks(self.pm, self, new)
        infos = {id(p): _info(self.pm, p) for p in new}
        self.plugins = sorted([*self.plugins, *infos.values()], key=lambda i: i.name)
        for hook_name, target, kind in (
            ("spark_sinks_register_sink_types", self.sink_types, "sink"),
            ("spark_sinks_register_sources", self.source_types, "source"),
        ):
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                info = infos.get(id(impl.plugin))
                if info is not None:
                    self._call(impl.function, hook_name, _registrar(target, kind, info), info)

    def _call(
        self, hook: Callable[..., None], hook_name: str, register: Any, info: PluginInfo
    ) -> None:
        try:
            hook(register=register)
        except Exception as exc:
            self.broken[info.name] = f"{hook_name} raised {_describe(exc)}"
            log.error(
                "plugin %r (%s) raised in %s: %s; set %s to skip it",
                info.name,
                info.distribution or "built in",
                hook_name,
                _describe(exc),
                LOAD_ENV,
            )


def _entry_point_names(types: Needed) -> set[str]:
    """The entry-point names that announce a plugin for these types."""
    return (
        {*types.sinks, *types.sources}
        | {f"{t}_sink" for t in types.sinks}
        | {f"{t}_source" for t in types.sources}
    )


def _wanted() -> set[str] | None:
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_DISTS: dict[str, tuple[str, str]] = {}
"""Plugin name -> (distribution, version), for plugins loaded from entry points."""


def _wanted_entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points that ``SPARK_SINKS_LOAD_PLUGINS`` lets load."""
    wanted = _wanted()
    eps = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else None
        if wanted is None or ep.name in wanted or dist in wanted:
            eps.append(ep)
    return eps


def _load_entry_points(
    pm: pluggy.PluginManager, eps: list[metadata.EntryPoint], registry: Registry
) -> list[object]:
    """Import and register these entry points; one that fails to import is recorded in
    ``registry.broken`` with its name and the others still load. Returns the plugins
    registered."""
    new: list[object] = []
    for ep in eps:
        if pm.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist else None
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
        new.append(plugin)
    return new


def _unknown_hooks(pm: pluggy.PluginManager, registry: Registry, new: list[object]) -> None:
    """A misspelt or undecorated hook would otherwise silently never be called."""
    for plugin in new:
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
            if not any(impl.plugin is p for p in new):
                continue
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


def load_registry(everything: bool = True) -> Registry:
    """The core's own sources, and every wanted entry-point plugin; or, with
    ``everything=False``, none of those yet: ``Registry.require`` loads what a config
    names."""
    from . import sources

    registry = Registry(unloaded=_wanted_entry_points())
    registry.pm.register(sources, name="spark_sinks.sources")
    registry.collect([sources])
    if everything:
        registry.load_all()
    return registry
