"""Export a fitted model to a deployment format: ``model.export(path, format=...)`` and
``transferkit export``.

Each format belongs to the framework whose machinery writes it (ONNX and ``torch.export``
programs to PyTorch, SavedModel and LiteRT to Keras, ``jax.export`` to Flax), and each
framework declares its formats (:attr:`Framework.exports`). Because the weights are
canonical, a model fitted in any framework is exported through the framework that owns
the format: the same weights are realised there first. Every export is run with the
format's own runtime right after writing and compared with transferkit's predictions; a
difference above the format's tolerance fails the export and leaves nothing behind.
Beside the export, ``<path>.json`` records the input it expects, the output, the class
names and the measured difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import owned, validate
from .errors import (
    ConfigError,
    ExportError,
    FrameworkNotInstalledError,
    OverwriteError,
    TransferkitError,
)
from .formats import ExportFormat, Serving
from .heads import Classifier
from .plugins import registry

#: inputs the check after writing runs (a batch size the export was not traced with)
CHECK_BATCH = 3


def owners() -> dict[str, list[tuple[str, ExportFormat]]]:
    """Every format an installed framework declares: name -> [(framework, format)]."""
    out: dict[str, list[tuple[str, ExportFormat]]] = {}
    for name, fw in sorted(registry().frameworks.items()):
        for fmt in fw.exports:
            out.setdefault(fmt.name, []).append((name, fmt))
    return out


def formats() -> dict[str, tuple[str, ExportFormat]]:
    """Every format, with the framework that writes it for the reference architectures
    (the one whose layouts are canonical where it declares the format)."""
    ref = registry().reference_framework()
    return {
        name: next(((f, x) for f, x in pairs if f == ref), pairs[0])
        for name, pairs in sorted(owners().items())
    }


def _owner(spec: Any, fmt_name: str) -> tuple[str, ExportFormat] | None:
    """The framework that writes ``fmt_name`` for ``spec``: its own framework where that
    declares the format, else one that realises its architecture (canonical first)."""
    pairs = owners().get(fmt_name, [])
    own = [p for p in pairs if p[0] == spec.framework]
    if own:
        return own[0]
    able = {s.framework for s in registry().catalog.filter() if spec.arch and s.arch == spec.arch}
    ref = registry().reference_framework()
    others = sorted((p for p in pairs if p[0] in able), key=lambda p: p[0] != ref)
    return others[0] if others else None


def formats_for(spec: Any) -> list[str]:
    """The formats a backbone exports to: its own framework's, and those of every
    framework that realises its architecture (a model with LoRA modules exports to none,
    which ``export`` says)."""
    return [name for name in sorted(owners()) if _owner(spec, name)]


def _check_format(model: Any, fmt_name: str) -> tuple[str, ExportFormat]:
    known = owners()
    if fmt_name not in known:
        raise ConfigError(
            f"unknown export format {fmt_name!r}; the installed frameworks export to "
            f"{', '.join(sorted(known)) or 'nothing'}"
        )
    if model.peft:
        raise ConfigError(
            f"a model with {model.peft.get('kind', 'peft')!r} modules cannot be exported yet; "
            "export a model fitted with another freeze policy"
        )
    found = _owner(model.spec, fmt_name)
    if found is None:
        writers = ", ".join(f for f, _ in known[fmt_name])
        raise ConfigError(
            f"{model.spec.name!r} cannot be exported to {fmt_name!r}: that format is written "
            f"by {writers}, which has no realisation of this architecture; it exports to "
            f"{', '.join(formats_for(model.spec)) or 'no format'}"
            + "".join(
                f" ({why})"
                for f, why in registry().framework(model.framework).export_notes
                if f == fmt_name
            )
        )
    owner, fmt = found
    fw = registry().framework(owner)
    fw.ensure_installed()
    missing = [m for m in fmt.requires if not _installed(m)]
    if missing:
        raise FrameworkNotInstalledError(
            f"exporting to {fmt_name!r} needs {', '.join(missing)}, which is not installed. "
            f"Install it with: pip install 'transferkit[{fmt.extra}]'"
        )
    return owner, fmt


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def realise(model: Any, framework: str) -> Any:
    """The same model (architecture, head, weights, classes) built in ``framework``."""
    if framework == model.framework:
        return model
    from .builder import build
    from .saving import realisation

    name = realisation(model.config(), framework)
    twin = build(
        name, head=model.head, weights=None, input_shape=model.input_shape, classes=model.classes
    )
    twin.set_weights(model.get_weights())
    return twin


def serving(model: Any) -> Serving:
    output = "probabilities" if isinstance(model.head, Classifier) else "values"
    return Serving(
        model.spec.input_kind,
        tuple(model.input_shape),
        tuple(float(m) for m in model.spec.mean),
        tuple(float(s) for s in model.spec.std),
        output,
    )


#: texts of different lengths (padding and the mask count), for a text model's check
CHECK_TEXTS = (
    "Shares rose sharply after the company reported record profits.",
    "The match ended in a draw",
    "A new film opens this weekend in cinemas across the country, with reviews calling it "
    "the director's most ambitious work to date.",
)


def check_inputs(model: Any, n: int = CHECK_BATCH, seed: int = 0) -> Any:
    """Inputs as a user has them (images in [0, 1], texts), for the check after writing."""
    if model.spec.input_kind == "text":
        return list(CHECK_TEXTS[:n])
    rng = np.random.default_rng(seed)
    return rng.random((n, *model.input_shape), dtype=np.float32)


def tokenizer_path(path: Path) -> Path:
    """Where a text model's export keeps its tokenizer: ``<path>.tokenizer``."""
    return path.with_name(f"{path.name}.tokenizer")


def _remove(path: Path) -> None:
    """Remove one of this export's own temporaries (never a path the user named)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sidecar(path: Path) -> Path:
    """The export's description beside it: ``<path>.json``."""
    return path.parent / f"{path.name}.json"


def _digest(path: Path) -> str | None:
    """SHA-256 of the export's bytes (a directory format: of its files, by name)."""
    try:
        if path.is_symlink():
            return None
        if path.is_file():
            return owned.digest(path)
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                h.update(f"{f.relative_to(path)}\0{owned.digest(f)}\0".encode())
            return h.hexdigest()
    except OSError:
        return None
    return None


def _previous(path: Path, directory: bool) -> dict[str, Any] | None:
    """The sidecar of an earlier export at ``path`` that transferkit provably wrote, or
    None. The proof: the sidecar names the file and records the SHA-256 of its bytes, and
    the file still has them (a user's JSON does not hold the digest of the file beside
    it; an export changed since is no longer transferkit's to replace)."""
    doc = owned.read_json(sidecar(path))
    if doc is None or doc.get("file") != path.name:
        return None
    if directory != path.is_dir() or doc.get("sha256") is None:
        return None
    return doc if doc["sha256"] == _digest(path) else None


def check_target(path: Path, fmt: ExportFormat) -> dict[str, Any] | None:
    """What an export may replace: an earlier transferkit export at the same path (the
    file, its sidecar ``<path>.json`` and a text model's ``<path>.tokenizer``). A user's
    file or directory at any of those, or a symbolic link, is refused before any work.
    Returns the earlier export's sidecar, if there is one."""
    directory = not fmt.suffix
    side = sidecar(path)
    previous = _previous(path, directory) if path.exists() else None
    if path.is_symlink():
        raise OverwriteError(
            f"{str(path)!r} is a symbolic link; transferkit does not export through links: "
            "choose another path"
        )
    if path.exists() and previous is None and not (directory and _empty_dir(path)):
        kind = "a directory" if path.is_dir() else "a file"
        raise OverwriteError(
            f"{str(path)!r} is {kind} that no transferkit export wrote (or it was changed "
            "since); refusing to replace it: move it away or choose another path"
        )
    if side.is_symlink() or side.is_dir() or (side.exists() and previous is None):
        raise OverwriteError(
            f"{str(side)!r} exists and is not the sidecar of a transferkit export at "
            f"{str(path)!r}; the export writes its description there: move it away or choose "
            "another path"
        )
    tok = tokenizer_path(path)
    if (tok.exists() or tok.is_symlink()) and not _ours_tokenizer(previous, tok):
        raise OverwriteError(
            f"{str(tok)!r} exists and no transferkit export wrote it; a text model's export "
            "keeps its tokenizer there: move it away or choose another path"
        )
    return previous


def _ours_tokenizer(previous: dict[str, Any] | None, tok: Path) -> bool:
    """The earlier export's tokenizer directory, unchanged since (its digest recorded)."""
    if previous is None or tok.is_symlink() or not tok.is_dir():
        return False
    named = isinstance(previous.get("input"), dict) and previous["input"].get("tokenizer")
    return named == tok.name and previous.get("tokenizer_sha256") == _digest(tok)


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _swap(tmp: Path, path: Path) -> None:
    """Put the written ``tmp`` at ``path`` (checked to be free or an earlier export)."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.tk-old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def export(model: Any, path: str | Path, format: str) -> Path:
    """Write ``model`` as ``format`` to ``path`` and check it (see the module docstring).

    ``path`` is the file (``model.onnx``) or, for a directory format (``savedmodel``),
    the directory. Returns ``path``; the sidecar ``<path>.json`` says what the export
    takes and returns. Only an earlier export that transferkit wrote at the same path
    is replaced (:func:`check_target`)."""
    validate.string("export(format)", format)
    if not isinstance(path, (str, Path)) or not str(path):
        raise ConfigError(f"export() needs a file or directory path, got {path!r:.60}")
    owner, fmt = _check_format(model, format)
    path = Path(path)
    if fmt.suffix and path.suffix != fmt.suffix:
        path = path.with_name(path.name + fmt.suffix)
    if path.parent.exists() and not path.parent.is_dir():
        raise OverwriteError(f"cannot export to {str(path)!r}: {str(path.parent)!r} is a file")
    check_target(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = serving(model)
    tmp = path.with_name(f".{path.name}.tk-export-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    text = spec.input_kind == "text"
    x = check_inputs(model)
    expected = model.predict(x)  # transferkit's own, in the model's own framework
    fw = registry().framework(owner)

    def discard() -> None:
        _remove(tmp)
        _remove(tokenizer_path(tmp))

    try:
        realised = realise(model, owner)
        if text:
            realised.engine.save_assets(tokenizer_path(tmp))
        fw.export(realised, tmp, format, spec)
        got = np.asarray(fw.run_exported(tmp, format, x, spec), dtype=np.float64)
    except TransferkitError:
        discard()
        raise
    except BaseException as e:  # the framework's own error, named as the export's
        discard()
        if not isinstance(e, Exception):
            raise
        raise ExportError(
            f"exporting {model.spec.name!r} to {format!r} through {owner} failed: "
            f"{type(e).__name__}: {str(e)[:500]}"
        ) from e
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.inf
    # relative to the outputs' scale where it exceeds 1 (a regressor's values, say)
    allowed = fmt.tolerance * max(1.0, float(np.max(np.abs(expected))))
    if not diff <= allowed:
        discard()
        raise ExportError(
            f"the {format!r} export of {model.spec.name!r} does not compute what the model "
            f"does: outputs of shape {got.shape} differ from transferkit's {expected.shape} by "
            f"up to {diff:.3g} (tolerance {allowed:.3g}); nothing was written"
        )
    meta = {
        "format": format,
        "file": path.name,
        "exported_by": owner,
        "fitted_in": model.framework,
        "backbone": model.spec.name,
        "input": _input_doc(spec, path)
        if text
        else {
            "kind": spec.input_kind,
            "shape": ["batch", *spec.input_shape],
            "dtype": "float32",
            "range": "[0, 1]" if spec.input_kind == "image" else None,
            "layout": "channels-last" if spec.input_kind == "image" else None,
            "normalisation": {"mean": spec.mean, "std": spec.std, "inside": True},
        },
        "output": spec.output,
        "classes": model.classes,
        "check": {"inputs": CHECK_BATCH, "max_abs_diff": diff, "tolerance": allowed},
        "sha256": _digest(tmp),  # the proof that transferkit wrote it: the bytes swapped in
    }
    if text:
        meta["tokenizer_sha256"] = _digest(tokenizer_path(tmp))
    tmp_side = sidecar(tmp)
    try:
        tmp_side.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        previous = check_target(path, fmt)  # nothing of the user's appeared there meanwhile
        _swap(tmp, path)
        if text:
            _swap(tokenizer_path(tmp), tokenizer_path(path))
        elif _ours_tokenizer(previous, tokenizer_path(path)):  # a text export's, replaced
            shutil.rmtree(tokenizer_path(path), ignore_errors=True)
        os.replace(tmp_side, sidecar(path))
    except OSError as e:
        discard()
        tmp_side.unlink(missing_ok=True)
        raise ExportError(f"cannot write the export {str(path)!r}: {e.strerror or e}") from None
    except BaseException:
        discard()
        tmp_side.unlink(missing_ok=True)
        raise
    return path


def _input_doc(spec: Serving, path: Path) -> dict[str, Any]:
    return {
        "kind": "text",
        "names": ["input_ids", "attention_mask"],
        "shape": ["batch", "tokens"],
        "dtype": "int64",
        "max_length": spec.input_shape[0],
        "tokenizer": tokenizer_path(path).name,
        "how": "AutoTokenizer.from_pretrained(tokenizer)(texts, padding=True, "
        f"truncation=True, max_length={spec.input_shape[0]}, return_tensors='np')",
    }
