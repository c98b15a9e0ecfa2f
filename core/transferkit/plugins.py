"""Plugin manager: entry-point discovery, per-plugin failure isolation, strict mode.

Every plugin, built-in adapters included, is found through the ``transferkit``
entry-point group. A plugin that fails to import or register is recorded as
failed with its reason and the others keep working.

The built-in adapters (the entry points of the ``transferkit`` distribution) load
first, whatever the names of the other plugins, and a name is owned by the first
plugin that registers it: a later plugin's backbone or framework of the same name is
dropped (the rest of that plugin is kept) and the clash is recorded, naming both
plugins, in its :attr:`PluginInfo.warnings`. Environment:

- ``TRANSFERKIT_STRICT_PLUGINS=1``: a failing plugin, a name clash or an unknown
  name in ``TRANSFERKIT_PLUGINS`` raises :class:`PluginError` (CI).
- ``TRANSFERKIT_PLUGINS=torch,mynet``: load only these entry points (allow-list); a
  name that no installed plugin provides is reported as a failed plugin.
"""

from __future__ import annotations

import os
import re
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
#: the distribution whose entry points are the built-in adapters
BUILTIN_DIST = "transferkit"
#: their modules, for entry points that carry no distribution
BUILTIN_MODULES = frozenset(
    {"transferkit_torch", "transferkit_flax", "transferkit_keras", "transferkit_hf"}
)
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
    #: registrations that were dropped (a name another plugin already owns)
    warnings: list[str] = field(default_factory=list)
    builtin: bool = False


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in {"1", "true", "yes", "on"}


def _normalize(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def is_builtin(ep: Any) -> bool:
    """Whether an entry point is one of transferkit's own adapters: it comes from the
    ``transferkit`` distribution (or, carrying no distribution, names a built-in module)."""
    dist = getattr(ep, "dist", None)
    dist_name = getattr(dist, "name", None)
    if dist_name:
        return _normalize(dist_name) == BUILTIN_DIST
    module = getattr(ep, "module", None) or str(getattr(ep, "value", "")).partition(":")[0]
    return module.split(".")[0] in BUILTIN_MODULES


class Registry:
    """The loaded plugins, the frameworks they registered and the backbone catalog."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("transferkit")
        self.pm.add_hookspecs(hookspecs)
        self.catalog = Catalog()
        self.frameworks: dict[str, Framework] = {}
        #: framework name -> the plugin that registered it
        self.framework_origin: dict[str, str] = {}
        self.plugins: dict[str, PluginInfo] = {}

    # --- loading -----------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load the ``transferkit`` entry points: the built-in adapters first (so that a
        third-party plugin can neither take their names nor make them fail), then the
        others by name."""
        allow = os.environ.get(ALLOW_ENV)
        allowed = {a.strip() for a in allow.split(",") if a.strip()} if allow else None
        seen: dict[str, str] = {}

        def key(ep):  # deterministic order, also between two claimants of one name
            return not is_builtin(ep), ep.name, getattr(getattr(ep, "dist", None), "name", "?")

        for ep in sorted(entry_points(group=GROUP), key=key):
            dist_name = key(ep)[2]
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
                ep.name,
                "loaded",
                ep.value,
                version=getattr(dist, "version", "") or "",
                builtin=is_builtin(ep),
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
        if allowed is not None:
            self._unknown_allowed(sorted(allowed - set(seen)), sorted(seen))

    def _unknown_allowed(self, unknown: list[str], installed: list[str]) -> None:
        """Report the names in the allow-list that no entry point provides."""
        have = ", ".join(installed) or "none"
        for name in unknown:
            self.plugins[name] = PluginInfo(
                name,
                "failed",
                error=(
                    f"{ALLOW_ENV} names {name!r}, which no installed plugin provides "
                    f"(installed: {have}); correct the name or install the plugin"
                ),
            )
        if unknown and _strict():
            names = ", ".join(map(repr, unknown))
            raise PluginError(
                f"{ALLOW_ENV} names {names}, which no installed plugin provides "
                f"(installed: {have}); correct {ALLOW_ENV}, or unset {STRICT_ENV} to go on "
                "without them"
            )

    def add(
        self, plugin: Any, name: str | None = None, info: PluginInfo | None = None
    ) -> PluginInfo:
        """Register a plugin object and run its hooks; isolated from the others.

        A backbone or framework whose name an earlier plugin already registered is
        dropped (the earlier one is kept) and recorded in ``info.warnings``; the plugin's
        other registrations are kept. If nothing of it is left it is marked failed. In
        strict mode a clash raises :class:`PluginError`.
        """
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
        except Exception as e:  # noqa: BLE001 - nothing of a failing plugin is kept
            self.pm.unregister(plugin)
            return self._fail(info, e)

        clashes: list[str] = []
        kept_frameworks = self._keep(
            "framework",
            name,
            [(fw.name, fw) for fw in frameworks],
            self.framework_origin,
            clashes,
            info.warnings,
        )
        kept_specs = self._keep(
            "backbone",
            name,
            [(s.name, s) for s in specs],
            self.catalog.origin,
            clashes,
            info.warnings,
        )
        if clashes and not (kept_frameworks or kept_specs):
            # Everything it registers belongs to other plugins: nothing of it is kept.
            self.pm.unregister(plugin)
            error = (
                f"every name it registers is already registered by another plugin "
                f"({len(clashes)} clash(es)): {clashes[0]}"
            )
            self._fail(info, error, strict=False)
        else:
            for fw in kept_frameworks:
                self.frameworks[fw.name] = fw
                self.framework_origin[fw.name] = name
            for spec in kept_specs:
                self.catalog.add(spec, name)
            info.frameworks = [fw.name for fw in kept_frameworks]
            info.backbones = [s.name for s in kept_specs]
            self.plugins[name] = info
        if clashes and _strict():
            more = f" (and {len(clashes) - 1} more clash(es))" if len(clashes) > 1 else ""
            raise PluginError(
                f"plugin {name!r}: {clashes[0]}{more}; unset {STRICT_ENV} to drop the clashing "
                "names and keep the rest of the plugin"
            )
        return info

    @staticmethod
    def _keep(
        kind: str,
        plugin: str,
        items: list[tuple[str, Any]],
        owners: dict[str, str],
        clashes: list[str],
        warnings: list[str],
    ) -> list[Any]:
        """The items whose names no other plugin owns yet; a message for each other one."""
        kept: dict[str, Any] = {}
        for item_name, item in items:
            owner = owners.get(item_name)
            if item_name in kept:
                warnings.append(
                    f"{kind} {item_name!r} is registered twice by plugin {plugin!r}; "
                    "kept the first registration"
                )
            elif owner is not None and owner != plugin:
                message = (
                    f"{kind} {item_name!r} from plugin {plugin!r} clashes with the one "
                    f"registered by plugin {owner!r}; kept plugin {owner!r}'s and dropped "
                    f"this one (give it another name in plugin {plugin!r})"
                )
                clashes.append(message)
                warnings.append(message)
            else:
                kept[item_name] = item
        return list(kept.values())

    def _fail(
        self, info: PluginInfo, error: BaseException | str, strict: bool | None = None
    ) -> PluginInfo:
        info.status = "failed"
        if isinstance(error, BaseException):
            info.error = traceback.format_exception_only(type(error), error)[-1].strip()
        else:
            info.error = error
        self.plugins[info.name] = info
        if _strict() if strict is None else strict:
            raise PluginError(
                f"plugin {info.name!r} failed to load ({info.error}); unset {STRICT_ENV} to "
                "skip failing plugins"
            ) from (error if isinstance(error, BaseException) else None)
        return info

    # --- queries -----------------------------------------------------------------
    def reference_framework(self) -> str | None:
        """The registered framework whose layouts are canonical (``Framework.reference``)."""
        return next((n for n, fw in sorted(self.frameworks.items()) if fw.reference), None)

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
