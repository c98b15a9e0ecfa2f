"""``tk.data``: the data container, loaders and input checks in one namespace.

Neutral data is numpy: images channels-last ``(N, H, W, C)`` (float32 in [0, 1] or
integers 0-255, scaled by 1/255), vectors ``(N, D)``, text ``list[str]``, labels
int64 ``(N,)``.
"""

from __future__ import annotations

from .checks import check_image_range, check_inputs, check_labels, check_stacked
from .dataset import Dataset, as_dataset, few_shot, train_val_split
from .interop import from_batches, from_hf, from_pairs
from .loaders import IMAGE_SUFFIXES, image_files, image_folder, load, load_npz, read_table

__all__ = [
    "IMAGE_SUFFIXES",
    "Dataset",
    "as_dataset",
    "check_image_range",
    "check_inputs",
    "check_labels",
    "check_stacked",
    "few_shot",
    "from_batches",
    "from_hf",
    "from_pairs",
    "image_files",
    "image_folder",
    "load",
    "load_npz",
    "read_table",
    "train_val_split",
]
