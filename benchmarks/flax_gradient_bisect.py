"""Where does Flax's float32 gradient of EfficientNet-Lite0 lose its digits? (issue:
fidelity; see benchmarks/gradient_accuracy.py for the symptom.)

One training-mode batch (the first batch ``tk.fit`` draws at seed 0, digits 5-9, 20 labels
per class, 32x32). The Flax model runs mixed: the stem and the blocks below ``k`` in
float64 (``jax_enable_x64``), the rest in float32. Printed: the error of the stem
kernel's gradient against the all-float64 gradient, relative to its largest entry, for
several ``k``, and for the model entirely in float32. The all-float64 Flax gradient
equals PyTorch's float64 one to about 1e-13.

Then the stem convolution alone, per output channel: its float32 rounding error in XLA
and in PyTorch (oneDNN) against float64, relative to the channel's standard deviation
over the batch (what training-mode BatchNorm divides by), beside the channel's
conditioning (largest sum of |input x weight| over its standard deviation).

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

    stem_rounding(np.asarray(x), np.asarray(net.backbone._conv_stem.kernel[...]))
    full = stem_gradient(blocks)
    scale = np.abs(full).max()
    print("| float64 up to block | stem gradient error |\n|---|---|")
    print(f"| none (all float32) | {np.abs(stem_gradient(0, False) - full).max() / scale:.1e} |")
    for k in (0, 2, 4, 8, 12, blocks):
        print(f"| {k} | {np.abs(stem_gradient(k) - full).max() / scale:.1e} |", flush=True)


def stem_rounding(x: np.ndarray, kernel: np.ndarray) -> None:
    """The stem's 3x3 stride-2 "same" convolution (padding 0 before, 1 after)."""
    import torch
    import torch.nn.functional as F
    from jax import lax

    def xla(a, k):
        dims = ("NHWC", "HWIO", "NHWC")
        return np.asarray(lax.conv_general_dilated(a, k, (2, 2), "SAME", dimension_numbers=dims))

    def onednn(dt):
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).to(dt)
        kt = torch.from_numpy(kernel.copy()).permute(3, 2, 0, 1).to(dt)
        out = F.conv2d(F.pad(xt, (0, 1, 0, 1)), kt, stride=2)
        return out.permute(0, 2, 3, 1).double().numpy()

    exact = xla(jnp.asarray(x, jnp.float64), jnp.asarray(kernel, jnp.float64))
    std = exact.std(axis=(0, 1, 2))
    live = std > 1e-3  # channels BatchNorm's epsilon does not swamp
    magnitude = xla(jnp.abs(jnp.asarray(x, jnp.float64)), jnp.abs(jnp.asarray(kernel, jnp.float64)))
    cond = magnitude.max(axis=(0, 1, 2)) / std

    def error(out):
        return np.abs(out - exact).max(axis=(0, 1, 2)) / std

    e_xla = error(xla(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32)))
    e_torch = error(onednn(torch.float32))
    worst = int(np.argmax(np.where(live, e_xla, 0)))
    print("| stem conv, float32 error / channel std | XLA | PyTorch |\n|---|---|---|")
    print(f"| largest over channels | {e_xla[live].max():.1e} | {e_torch[live].max():.1e} |")
    print(
        f"| median over channels | {np.median(e_xla[live]):.1e} | {np.median(e_torch[live]):.1e} |"
    )
    print(
        f"\nworst channel {worst}: conditioning {cond[worst]:.0f}"
        f" (median {np.median(cond[live]):.0f}),"
        f" float32 epsilon x conditioning {np.finfo(np.float32).eps * cond[worst]:.1e}\n"
    )


if __name__ == "__main__":
    main()
