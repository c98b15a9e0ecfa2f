"""transferkit: transfer learning through one API on any installed framework.

Example::

    import transferkit as tk
    train, test = tk.datasets.digits_transfer(shots=10, seed=0)
    model = tk.build("torch:cnn", head=tk.Classifier(num_classes=5))
    tk.fit(model, train, val=test, freeze=tk.freeze.GradualUnfreeze(), epochs=20, seed=0)
    print(model.evaluate(test))
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import callbacks, data, datasets, errors, freeze, metrics, regularizers
from .builder import build, list_backbones
from .callbacks import Callback, Checkpoint, EarlyStopping, History, ProgressLogger
from .catalog import BackboneSpec, LayerGroup, WeightSource
from .checkpoint import TrainState
from .data import Dataset
from .framework import Engine, Framework
from .freeze import FreezePolicy
from .heads import Classifier, Head, Regressor
from .hookspecs import hookimpl
from .interpolation import interpolate
from .lr_finder import LRFinder, find_lr
from .model import Backbone, Model
from .optimizers import OptimizerSpec
from .plugins import list_plugins, register
from .ranking import Ranking, rank
from .saving import load
from .search import SearchResult, search, search_from_toml
from .training import Trainer, fit

try:
    __version__ = version("transferkit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Callback",
    "Checkpoint",
    "Classifier",
    "Dataset",
    "EarlyStopping",
    "Engine",
    "FreezePolicy",
    "Framework",
    "Head",
    "History",
    "LRFinder",
    "LayerGroup",
    "Model",
    "OptimizerSpec",
    "ProgressLogger",
    "Ranking",
    "Regressor",
    "SearchResult",
    "TrainState",
    "Trainer",
    "WeightSource",
    "build",
    "callbacks",
    "data",
    "find_lr",
    "datasets",
    "errors",
    "fit",
    "freeze",
    "hookimpl",
    "interpolate",
    "list_backbones",
    "list_plugins",
    "rank",
    "search",
    "search_from_toml",
    "load",
    "metrics",
    "regularizers",
    "register",
]
