"""transferkit-tinyconv: an example third-party backbone plugin.

Importing this module imports no torch: it registers metadata and the dotted path of
the factory, and transferkit imports :mod:`transferkit_tinyconv.model` only when a user
builds the backbone.
"""

from __future__ import annotations

import transferkit

SPEC = transferkit.BackboneSpec(
    name="torch:tinyconv",
    input_kind="image",
    input_shape=(16, 16, 3),
    feature_size=32,
    groups=(("block1", ("block1",)), ("block2", ("block2",))),
    factory="transferkit_tinyconv.model:build",
    weights=None,
    tags=("small", "example"),
    description="example plugin: two 3x3 conv-BN-ReLU blocks, global average pool "
    "(32 features) for 16x16 RGB images",
)


@transferkit.hookimpl
def transferkit_register_backbones(register):
    register(SPEC)
