"""``tk.rank``: which pretrained backbone, and how deep, from one forward pass each.

Each candidate's features on the labelled training data are computed once (batched,
in inference mode) and scored by a transferability metric (``transferability.py``):
LogME by default; H-score, NLEEP, LEEP (candidates whose pretrained weights carry
their source classifier), and the cheap honest references every estimator must beat,
leave-one-out k-NN and a cross-validated linear probe. ``layers=True`` scores the
features leaving every layer group as well (``Engine.group_features``): the group whose
features score best is where the transferable part ends, so the groups after it are
the ones to retrain (the suggested ``TrainLast(n)``; none: ``FeatureExtraction()``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import owned, transferability
from .errors import ConfigError


@dataclass
class Candidate:
    """One row of a :class:`Ranking`."""

    name: str
    framework: str
    feature_size: int
    score: float
    seconds: float
    weights: str | None = None
    #: with ``layers=True``: layer group -> score of the features leaving it
    layers: dict[str, float] = field(default_factory=dict)
    #: with ``layers=True``: what to train (``"TrainLast(2)"``, ``"FeatureExtraction()"``)
    suggested_freeze: str | None = None

    def freeze_policy(self) -> Any:
        """``suggested_freeze`` as a ``tk.freeze`` policy (None without layer scores)."""
        from . import freeze

        if self.suggested_freeze is None:
            return None
        if self.suggested_freeze.startswith("TrainLast("):
            return freeze.TrainLast(int(self.suggested_freeze[len("TrainLast(") : -1]))
        return freeze.FeatureExtraction()


@dataclass
class Ranking:
    """Candidates best first. ``best`` is the top one's name; ``table`` the rows as dicts."""

    metric: str
    rows: list[Candidate]
    examples: int

    @property
    def best(self) -> str:
        return self.rows[0].name

    @property
    def table(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def __repr__(self) -> str:
        top = ", ".join(f"{r.name} {r.score:.4g}" for r in self.rows[:3])
        return f"Ranking({self.metric}, {len(self.rows)} candidates: {top})"

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(
            {"metric": self.metric, "examples": self.examples, "rows": self.table}, indent=2
        )
        if path is not None:
            owned.write_text(path, text, "ranking")
        return text

    def to_markdown(self) -> str:
        info = transferability.METRICS[self.metric]
        lines = [
            f"Ranked by {self.metric} ({info.description}; higher is better) on "
            f"{self.examples} labelled examples.",
            "",
            "| rank | candidate | framework | features | score | seconds |"
            + (" suggested freeze |" if any(r.layers for r in self.rows) else ""),
            "|---:|---|---|---:|---:|---:|" + ("---|" if any(r.layers for r in self.rows) else ""),
        ]
        for i, r in enumerate(self.rows, 1):
            name = f"{r.name} (random init)" if r.weights == "random init" else r.name
            cells = f"| {i} | {name} | {r.framework} | {r.feature_size} | {r.score:.4g} | "
            cells += f"{r.seconds:.1f} |"
            if r.layers:
                cells += f" {r.suggested_freeze} |"
            lines.append(cells)
        for r in self.rows:
            if r.layers:
                scores = ", ".join(f"{g} {s:.3g}" for g, s in r.layers.items())
                lines.append(f"\n{r.name} by layer group: {scores}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """A bar per candidate; with layer scores, the score after each group too."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layered = [r for r in self.rows if r.layers]
        fig, axes = plt.subplots(1, 2 if layered else 1, figsize=(11 if layered else 6, 4))
        axes = np.atleast_1d(axes)
        names = [r.name for r in self.rows][::-1]
        axes[0].barh(names, [r.score for r in self.rows][::-1], color="C0")
        axes[0].set_xlabel(f"{self.metric} (higher transfers better)")
        for r in layered:
            axes[1].plot(list(r.layers), list(r.layers.values()), "o-", label=r.name)
        if layered:
            axes[1].set_xlabel("features leaving layer group")
            axes[1].set_ylabel(self.metric)
            axes[1].tick_params(axis="x", rotation=45)
            axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        owned.save_figure(fig, path, "ranking plot", dpi=100)
        plt.close(fig)
        return path

    def save(self, directory: str | Path) -> Path:
        """``rank.json``, ``rank.md`` and ``rank.png`` in ``directory``."""
        out = Path(directory)
        for name in ("rank.json", "rank.md", "rank.png"):  # all refused before any is written
            owned.check_file(out / name, "ranking report")
        out.mkdir(parents=True, exist_ok=True)
        self.to_json(out / "rank.json")
        owned.write_text(out / "rank.md", self.to_markdown() + "\n", "ranking report")
        self.plot(out / "rank.png")
        return out


def _kind(x: Any) -> str:
    if isinstance(x, list | tuple) and x and isinstance(x[0], str):
        return "text"
    return "image" if np.ndim(x[0]) >= 2 else "vector"


def _expand(candidates: Any, kind: str) -> list[tuple[str, dict[str, Any], Any]]:
    """(name, build options, built model or None) per candidate; patterns expand to the
    installed backbones that take ``kind`` inputs. Names are checked here, before work."""
    from .builder import _spec, list_backbones
    from .model import Model
    from .plugins import registry

    if isinstance(candidates, str | Model) or (
        isinstance(candidates, tuple) and len(candidates) == 2 and isinstance(candidates[1], dict)
    ):
        candidates = [candidates]
    if not isinstance(candidates, Sequence) or not candidates:
        raise ConfigError(
            "rank() needs candidates: backbone names or patterns ('torch:*'), built models, "
            "or (name, build options) pairs"
        )
    out: list[tuple[str, dict[str, Any], Any]] = []
    reg = registry()
    for c in candidates:
        if isinstance(c, Model):
            out.append((c.spec.name, {}, c))
            continue
        name, options = (c, {}) if isinstance(c, str) else c
        if not isinstance(name, str) or not isinstance(options, dict):
            raise ConfigError(
                f"rank(): a candidate must be a name, a model or (name, dict), got {c!r}"
            )
        if any(ch in name for ch in "*?["):
            found = [  # installed, of the data's kind, with weights to rank
                s.name
                for s in list_backbones(name)
                if s.input_kind == kind
                and not reg.frameworks[s.framework].missing()
                and (_pretrained(s) or "weights" in options)
            ]
            if not found:
                raise ConfigError(
                    f"rank(): no installed {kind} backbone matches {name!r}; see "
                    "`transferkit backbones`"
                )
            out += [(n, dict(options), None) for n in found]
            continue
        spec = _spec(name)  # an unknown name is named here, with the closest ones
        reg.frameworks[spec.framework].ensure_installed()
        if not (_pretrained(spec) or "weights" in options):
            raise ConfigError(
                f"rank(): {name!r} has no pretrained weights; rank it as ({name!r}, "
                '{"weights": None}) (a random start) or with {"weights": "file.safetensors"}'
            )
        out.append((name, dict(options), None))
    for name, _, model in out:
        spec = model.spec if model is not None else _spec(name)
        if spec.input_kind != kind:
            raise ConfigError(
                f"rank(): {name!r} takes {spec.input_kind} inputs, but the data are {kind}; "
                "leave it out or rank it on other data"
            )
    return out


def _pretrained(spec: Any) -> bool:
    return spec.weights is not None or spec.loads_pretrained


def source_classifier(spec: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The source task's classifier (weight ``(Z, feature_size)``, bias ``(Z,)``) where the
    backbone's pretrained weights file keeps it beside the backbone (its ``ignore_keys``)."""
    from . import weights as wio
    from .errors import WeightsError

    if spec.weights is None or not spec.ignore_keys:
        return None
    try:
        arrays = wio.read(spec.weights.path())
    except (WeightsError, OSError):
        return None
    for prefix in spec.ignore_keys:
        w, b = arrays.get(f"{prefix}.weight"), arrays.get(f"{prefix}.bias")
        if w is not None and b is not None and w.ndim == 2 and w.shape[1] == spec.feature_size:
            return np.asarray(w, np.float64), np.asarray(b, np.float64)
    return None


def _source_probs(features: np.ndarray, head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    logits = features.astype(np.float64) @ head[0].T + head[1]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def rank(
    candidates: Any,
    train: Any,
    metric: str = "logme",
    layers: bool = False,
    input_shape: tuple[int, ...] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    verbose: int | str = "auto",
) -> Ranking:
    """Rank ``candidates`` by how well their features transfer to ``train`` (labelled).

    ``candidates``: backbone names or patterns (``"torch:*"``: the installed backbones
    that take the data's kind of input), built models, or ``(name, build options)``
    pairs (``("torch:resnet18", {"weights": None})``), from any installed framework,
    mixed; patterns and names need pretrained weights unless the options say otherwise.
    ``input_shape`` applies to the resizable candidates built here not given their own.

    Example::

        ranking = tk.rank(["torch:cnn", "torch:efficientnet_lite0"], train)
        print(ranking.to_markdown()); best = ranking.best
    """
    from . import validate
    from .builder import _spec, build
    from .data import as_dataset, check_labels
    from .heads import Classifier

    validate.choice("metric", metric, tuple(transferability.METRICS))
    data = as_dataset(train, "train")
    if data.y is None:
        raise ConfigError("rank() needs labelled data: train.y is missing")
    y = check_labels(data.y, len(data), "classification", int(np.max(data.y)) + 1, "train.y")
    chosen = _expand(candidates, _kind(data.x))
    needs_source = transferability.METRICS[metric].needs == "source_probs"
    if needs_source:
        heads = {n: source_classifier(m.spec if m else _spec(n)) for n, _, m in chosen}
        lacking = [n for n, h in heads.items() if h is None]
        if lacking:
            raise ConfigError(
                f"metric {metric!r} needs the source classifier, which {', '.join(lacking)} "
                "do(es) not carry (only a pretrained file with its classifier does, such as "
                "efficientnet_lite0's ImageNet head); use 'nleep' or 'logme'"
            )
    show = verbose not in (0, False) and (verbose != "auto" or sys.stderr.isatty())
    rows = []
    classes = int(np.max(y)) + 1
    for i, (name, options, model) in enumerate(chosen, 1):
        t0 = time.perf_counter()
        if model is None:
            opts = {"seed": seed, **options}
            if input_shape is not None and _spec(name).resizable:
                opts.setdefault("input_shape", input_shape)
            model = build(name, head=Classifier(classes), **opts)
        if show:
            print(f"rank: {i}/{len(chosen)} {name}: features of {len(y)} examples",
                  file=sys.stderr)  # fmt: skip
        engine, scores = model.engine, {}
        if layers:
            parts: dict[str, list[np.ndarray]] = {}
            for xb in model.prepared_batches(data.x, batch_size):
                for g, v in engine.group_features(xb).items():
                    parts.setdefault(g, []).append(np.asarray(v))
            groups = {g: np.concatenate(v) for g, v in parts.items()}
            features = groups[model.spec.group_names[-1]]
            scores = {g: _score(metric, f, y, None, seed) for g, f in groups.items()}
        else:
            features = model.features(data.x, batch_size)
        probs = _source_probs(features, heads[name]) if needs_source else None
        value = scores.get(model.spec.group_names[-1]) if layers else None
        value = value if value is not None else _score(metric, features, y, probs, seed)
        rows.append(
            Candidate(
                name, model.framework, features.shape[1], value, time.perf_counter() - t0,
                model.weights_origin or "random init", scores,
                _suggest(model.spec.group_names, scores) if scores else None,
            )
        )  # fmt: skip
    rows.sort(key=lambda r: -r.score)
    return Ranking(metric, rows, len(y))


def _score(metric: str, f: np.ndarray, y: np.ndarray, probs: Any, seed: int) -> float:
    options = {"seed": seed} if metric in ("probe", "nleep") else {}
    if metric == "leep":
        return transferability.score(metric, labels=y, source_probs=probs)
    return transferability.score(metric, features=f, labels=y, **options)


def _suggest(groups: tuple[str, ...], scores: dict[str, float]) -> str:
    """Retrain the groups after the one whose features score best."""
    best = max(range(len(groups)), key=lambda i: scores.get(groups[i], -np.inf))
    n = len(groups) - 1 - best
    return f"TrainLast({n})" if n else "FeatureExtraction()"
