"""Make the shipped pretrained weights: train a reference architecture on the source
task (digits 0-4) and keep its backbone. Deterministic for a given seed and framework."""

from __future__ import annotations

from pathlib import Path

from . import weights as wio
from .builder import build
from .datasets import digits_source
from .errors import ConfigError
from .heads import Classifier
from .plugins import registry
from .pretrained import HERE
from .training import fit

RECIPES = {
    "cnn": dict(epochs=15, lr=2e-3, batch_size=64),
    "mlp": dict(epochs=40, lr=2e-3, batch_size=64),
}


def pretrain(
    arch: str,
    framework: str | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    verbose: int | str = "auto",
) -> tuple[Path, dict[str, float]]:
    """Train ``framework:arch`` on digits 0-4 and write its backbone weights (default:
    in the framework whose layouts are canonical, which made the shipped files).

    Returns the file written (default: the shipped file) and the held-out metrics.
    """
    if arch not in RECIPES:
        raise ValueError(f"no pretraining recipe for {arch!r}; choose from {sorted(RECIPES)}")
    framework = framework or registry().reference_framework()
    if framework is None:
        raise ConfigError("no framework with the reference layouts is installed; pass one")
    source = digits_source()
    train, held_out = source.split(0.2, seed=seed)
    model = build(f"{framework}:{arch}", head=Classifier(5), weights=None, seed=seed)
    fit(model, train, val=held_out, seed=seed, verbose=verbose, **RECIPES[arch])
    scores = model.evaluate(held_out)
    arrays = {
        k[len("backbone.") :]: v
        for k, v in model.get_weights().items()
        if k.startswith("backbone.")
    }
    path = Path(out) if out else HERE / f"{arch}.safetensors"
    wio.save(
        arrays,
        path,
        {
            "arch": arch,
            "source_task": "digits 0-4 (scikit-learn load_digits)",
            "framework": framework,
            "seed": str(seed),
            "held_out_accuracy": f"{scores['accuracy']:.4f}",
        },
    )
    return path, scores
