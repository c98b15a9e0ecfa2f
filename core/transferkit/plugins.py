"""Plugin manager: entry-point discovery, per-plugin failure isolation, strict mode.

Every plugin, built-in adapters included, is found through the ``transferkit``
entry-point group. A plugin that fails to import or register is recorded as
failed with its reason and the others keep working. Environment:

- ``TRANSFERKIT_STRICT_PLUGINS=1``: a failing plugin raises :class:`PluginError` (CI).
- ``TRANSFERKIT_PLUGINS=torch,mynet``: load only these entry points (allow-list).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .catalog import BackboneSpec, Catalog, _load_callable
from .errors import ConfigError, PluginError, UnknownFrameworkError
from .framework import Framework

GROUP = "transferkit"
STRICT_ENV = "TRANSFERKIT_STRICT_PLUGINS"
ALLOW_ENV = "TRANSFERKIT_PLUGINS"


@dataclass
class PluginInfo:
    """What ``transferkit plugins`` shows for one plugin."""

    name: str
    status: str  # "loaded", "failed" or "disabled"
    source: str = ""  # entry point value or "<registered>"
    version: str = ""
    hooks: list[str] = field(default_factory=list)
    frameworks: list[str] = field(default_factory=list)
    backbones: list[str] = field(default_factory=list)
    error: str | None = None


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in {"1", "true", "yes", "on"}


class Registry:
    """The loaded plugins, the frameworks they registered and the backbone catalog."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("transferkit")
        self.pm.add_hookspecs(hookspecs)
        self.catalog = Catalog()
        self.frameworks: dict[str, Framework] = {}
        self.plugins: dict[str, PluginInfo] = {}

    # --- loading -----------------------------------------------------------------
    def load_entry_points(self) -> None:
        allow = os.environ.get(ALLOW_ENV)
        allowed = {a.strip() for a in allow.split(",") if a.strip()} if allow else None
        seen: dict[str, str] = {}

        def key(ep):  # deterministic order, also between two claimants of one name
            return ep.name, getattr(getattr(ep, "dist", None), "name", "?")

        for ep in sorted(entry_points(group=GROUP), key=key):
            dist_name = key(ep)[1]
            if ep.name in seen:
                # Two distributions claim one plugin name: neither silently wins.
                self._fail(
                    PluginInfo(f"{ep.name} ({dist_name})", "failed", ep.value),
                    PluginError(
                        f"plugin name {ep.name!r} is already used by distribution {seen[ep.name]!r}"
                    ),
                )
                continue
            seen[ep.name] = dist_name
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name, "loaded", ep.value, version=getattr(dist, "version", "") or ""
            )
            if allowed is not None and ep.name not in allowed:
                info.status = "disabled"
                info.error = f"not in {ALLOW_ENV}"
                self.plugins[ep.name] = info
                continue
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - any import failure is the plugin's
                self._fail(info, e)
                continue
            self.add(obj, ep.name, info)

    def add(
        self, plugin: Any, name: str | None = None, info: PluginInfo | None = None
    ) -> PluginInfo:
        """Register a plugin object and run its hooks; isolated from the others."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = info or PluginInfo(name, "loaded", "<registered>")
        if name in self.plugins and self.plugins[name].status == "loaded":
            raise PluginError(f"a plugin named {name!r} is already registered")
        try:
            self.pm.register(plugin, name)
        except Exception as e:  # noqa: BLE001 - e.g. a hook with a wrong signature
            return self._fail(info, e)
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        frameworks: list[Framework] = []
        specs: list[BackboneSpec] = []
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        try:
            call = self.pm.subset_hook_caller("transferkit_register_frameworks", others)
            call(register=lambda fw: frameworks.append(_as_framework(fw)))
            call = self.pm.subset_hook_caller("transferkit_register_backbones", others)
            call(register=lambda spec: specs.append(_as_spec(spec)))
            for fw in frameworks:
                if fw.name in self.frameworks:
                    raise ConfigError(f"framework {fw.name!r} is already registered")
            for spec in specs:
                if spec.name in self.catalog:
                    raise ConfigError(f"backbone {spec.name!r} is already registered")
        except Exception as e:  # noqa: BLE001 - nothing of a failing plugin is kept
            self.pm.unregister(plugin)
            return self._fail(info, e)
        for fw in frameworks:
            self.frameworks[fw.name] = fw
        for spec in specs:
            self.catalog.add(spec, name)
        info.frameworks = [fw.name for fw in frameworks]
        info.backbones = [s.name for s in specs]
        self.plugins[name] = info
        return info

    def _fail(self, info: PluginInfo, error: BaseException) -> PluginInfo:
        info.status = "failed"
        info.error = traceback.format_exception_only(type(error), error)[-1].strip()
        self.plugins[info.name] = info
        if _strict():
            raise PluginError(
                f"plugin {info.name!r} failed to load ({info.error}); unset {STRICT_ENV} to "
                "skip failing plugins"
            ) from error
        return info

    # --- queries -----------------------------------------------------------------
    def framework(self, name: str) -> Framework:
        try:
            return self.frameworks[name]
        except KeyError:
            known = ", ".join(sorted(self.frameworks)) or "none"
            raise UnknownFrameworkError(
                f"no framework {name!r} is registered (registered: {known}). "
                "Is its plugin installed? Run `transferkit plugins`."
            ) from None


def _as_framework(obj: Any) -> Framework:
    if isinstance(obj, str):
        obj = _load_callable(obj)()
    if not isinstance(obj, Framework):
        raise ConfigError(f"register() expects a transferkit.Framework, got {type(obj).__name__}")
    return obj


def _as_spec(obj: Any) -> BackboneSpec:
    if not isinstance(obj, BackboneSpec):
        raise ConfigError(
            f"register() expects a transferkit.BackboneSpec, got {type(obj).__name__}"
        )
    return obj


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, discovered from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        reg = Registry()
        reg.load_entry_points()
        _REGISTRY = reg
    return _REGISTRY


def reload() -> Registry:
    """Discover plugins again (after installing one, or changing the environment)."""
    global _REGISTRY
    _REGISTRY = None
    return registry()


def register(plugin: Any, name: str | None = None) -> PluginInfo:
    """Register a plugin object in this process (as pytest's ``-p``); see hookspecs."""
    return registry().add(plugin, name)


def list_plugins() -> list[PluginInfo]:
    return list(registry().plugins.values())
