"""Where does Flax's float32 gradient of EfficientNet-Lite0 lose its digits? (issue:
fidelity; see benchmarks/gradient_accuracy.py for the symptom.)

One training-mode batch (the first batch ``tk.fit`` draws at seed 0, digits 5-9, 20 labels
per class, 32x32). The Flax model runs mixed: the stem and the blocks below ``k`` in
float64 (``jax_enable_x64``), the rest in float32. Printed: the error of the stem
kernel's gradient against the all-float64 gradient, relative to its largest entry, for
several ``k``, and for the model entirely in float32. The all-float64 Flax gradient
equals PyTorch's float64 one to about 1e-13.

    python benchmarks/flax_gradient_bisect.py
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import transferkit as tk  # noqa: E402
from transferkit.bench.workload import task_data  # noqa: E402


def main() -> None:
    train, _ = task_data({"data": "digits", "test_size": 200}, 20, 0)
    idx = np.random.default_rng(0).permutation(len(train.y))[:16]
    model = tk.build("flax:efficientnet_lite0", head=tk.Classifier(5), input_shape=(32, 32, 3))
    x, y = model.prepare(train.x[idx]), jnp.asarray(train.y[idx])
    net = model.engine.native
    net.train()
    graph, state = nnx.split(net)

    def cast(dt):
        return jax.tree.map(
            lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
        )

    blocks = len(net.backbone._blocks)

    def stem_gradient(k: int, stem64: bool = True) -> np.ndarray:
        def loss(m64, m32):
            b64, b32 = m64.backbone, m32.backbone
            first = b64 if stem64 else b32
            dt = jnp.float64 if stem64 else jnp.float32
            h = nnx.relu6(first._bn0(first._conv_stem(jnp.asarray(x, dt))))
            for i in range(blocks):
                low = i < k and stem64
                h = (b64 if low else b32)._blocks[i](h.astype(jnp.float64 if low else jnp.float32))
            h = h.astype(jnp.float32)
            h = nnx.relu6(b32._bn1(b32._conv_head(h))).mean(axis=(1, 2))
            return optax.softmax_cross_entropy_with_integer_labels(m32.head(h), y).mean()

        m64, m32 = nnx.merge(graph, cast(jnp.float64)), nnx.merge(graph, cast(jnp.float32))
        g = nnx.grad(loss, argnums=0 if stem64 else 1)(m64, m32)
        return np.asarray(g.backbone._conv_stem.kernel[...], np.float64)

    full = stem_gradient(blocks)
    scale = np.abs(full).max()
    print("| float64 up to block | stem gradient error |\n|---|---|")
    print(f"| none (all float32) | {np.abs(stem_gradient(0, False) - full).max() / scale:.1e} |")
    for k in (0, 2, 4, 8, 12, blocks):
        print(f"| {k} | {np.abs(stem_gradient(k) - full).max() / scale:.1e} |", flush=True)


if __name__ == "__main__":
    main()
