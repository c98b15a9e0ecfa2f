"""What the benchmark asks of the registered frameworks, in the parent process: which
exist, their variants (``keras[jax]``), what they need installed, their native
baselines, the environment of their case processes and the libraries a report names.

Everything here is the frameworks' own declarations (:class:`transferkit.Framework`:
``baselines``, ``variants()``, ``extra``, ``libraries``, ``process_env``), so a
third-party framework takes part with no change to the benchmark. Nothing here imports
a framework.
"""

from __future__ import annotations

import difflib
import importlib.util
import os

from ..errors import ConfigError, UnknownBackboneError
from ..framework import Baseline, Framework, Variant
from ..plugins import registry
from .suite import Case, Task


def registered() -> dict[str, Framework]:
    return registry().frameworks


def variant(case: Case) -> Variant | None:
    if case.variant is None:
        return None
    return {v.name: v for v in registered()[case.plugin].variants()}[case.variant]


def baselines(task: Task, fw: Framework) -> list[Baseline]:
    """The native baselines a task runs in a framework: those the suite names for it,
    else the framework's defaults."""
    declared = {b.name: b for b in fw.baselines}
    if fw.name in task.baselines:
        return [declared[n] for n in task.baselines[fw.name]]
    return [b for b in fw.baselines if b.default]


def resolved_baselines(task: Task) -> dict[str, list[str]]:
    """Framework -> baseline names, for every registered framework (the report's record)."""
    out = {name: [b.name for b in fw.baselines if b.default] for name, fw in registered().items()}
    return {k: v for k, v in {**out, **task.baselines}.items() if v}


def libraries() -> list[str]:
    """numpy and what every registered framework (and its variants) names."""
    names = ["numpy"]
    for fw in registered().values():
        names += fw.libraries or fw.requires
        for v in fw.variants():
            names += v.requires
    return list(dict.fromkeys(names))


def case_env(case: Case) -> dict[str, str]:
    """The environment of a case's process: the framework's defaults under the user's
    settings, the variant's selection over them."""
    env = dict(os.environ)
    for key, value in registered()[case.plugin].process_env:
        env.setdefault(key, value)
    v = variant(case)
    env.update(dict(v.env) if v else {})
    return env


def _unknown(case: Case, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(case.plugin, known, n=3)
    return ConfigError(
        f"unknown framework {case.framework!r} in the suite (task {case.task.name!r}); "
        f"known: {', '.join(known)}" + (f"; did you mean {', '.join(close)}?" if close else "")
    )


def _check_variant(case: Case, fw: Framework) -> None:
    names = [v.name for v in fw.variants()]
    if case.variant is None or case.variant in names:
        return
    every = [f"{n}[{v.name}]" for n, f in registered().items() for v in f.variants()]
    took = f"one of {', '.join(f'{fw.name}[{n}]' for n in names)}" if names else "no variant"
    raise ConfigError(
        f"framework {case.framework!r}: {fw.name} takes {took}; frameworks with variants: "
        f"{', '.join(every) or 'none'}"
    )


def _check_baselines(case: Case, fw: Framework) -> None:
    declared = [b.name for b in fw.baselines]
    for name in case.task.baselines.get(fw.name, []):
        if name not in declared:
            raise ConfigError(
                f"suite task {case.task.name!r}: framework {fw.name!r} has no native baseline "
                f"{name!r}; it declares: {', '.join(declared) or 'none'}"
            )


def check(cases: list[Case]) -> dict[str, str]:
    """Unknown frameworks, variants, baselines and backbones are errors (before anything
    runs); a framework whose packages are not installed, or whose plugin failed to load,
    makes its cases skipped. Returns case id -> reason to skip."""
    reg = registry()
    skip: dict[str, str] = {}
    for c in cases:
        fw = reg.frameworks.get(c.plugin)
        plugin = reg.plugins.get(c.plugin)
        if fw is None and plugin is not None and plugin.status != "loaded":
            skip[c.id] = (
                f"framework {c.plugin!r} is not available: its plugin is {plugin.status} "
                f"({plugin.error}); see `transferkit plugins`"
            )
            continue
        if fw is None:
            raise _unknown(c, sorted(reg.frameworks))
        if reg.plugins[reg.framework_origin[c.plugin]].source == "<registered>":
            raise ConfigError(
                f"framework {c.plugin!r} was registered in this process only "
                "(transferkit.register); the benchmark runs every case in a fresh process, "
                "which finds plugins through the 'transferkit' entry points: install it"
            )
        _check_variant(c, fw)
        _check_baselines(c, fw)
        missing = fw.missing()
        v = variant(c)
        for module in v.requires if v else ():
            if module not in missing and importlib.util.find_spec(module) is None:
                missing.append(module)
        if missing:
            skip[c.id] = (
                f"framework {c.framework!r} needs {', '.join(missing)}, which is not "
                f"installed: pip install 'transferkit[{fw.extra}]'"
            )
            continue
        if c.backbone not in reg.catalog:
            try:
                fw.resolve(c.backbone.partition(":")[2]) or reg.catalog.get(c.backbone)
            except UnknownBackboneError as e:
                raise ConfigError(f"suite task {c.task.name!r}: {e}") from None
    return skip
