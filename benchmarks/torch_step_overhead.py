"""transferkit's PyTorch training step against a hand-written PyTorch loop.

Same modules (the reference ``cnn`` and a ``Linear(128, 5)`` head), same starting
weights, same data (the digits 5-9 training half, prepared to 32x32x3), batch 64, Adam
lr 1e-3, cross-entropy. The hand-written loop holds its data as one NCHW tensor made up
front, as a PyTorch user would. Three comparisons, each measured alternately (one of
each, order swapped every time) so that machine noise hits both sides alike:

* step: ``engine.train_step`` (with the trainer's batch gather) against the
  hand-written step, batch by batch on the same batches;
* fit, 1 epoch: ``tk.fit(epochs=1)`` against one hand-written epoch, which shows the
  fixed cost of a ``fit`` call (input checks, preprocessing, a new optimizer);
* fit, 5 epochs: ``tk.fit(epochs=5)`` against five hand-written epochs.

Each reports medians, the interquartile range and the ratio of medians, with the
spread of the paired ratios.

    python benchmarks/torch_step_overhead.py [--steps 200] [--rounds 7] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from transferkit import owned
from transferkit.bench.stats import pair_ratio, quartiles, ratio_of_medians

BATCH = 64
LR = 1e-3


def hand_written(x: np.ndarray, y: np.ndarray, state: dict):
    """What a PyTorch user writes: the same modules, one optimizer, an NCHW tensor."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from transferkit_torch.architectures import CNN

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = CNN(3)
            self.head = nn.Linear(128, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

    net = Net()
    # transferkit names its single output layer ``head.out``.
    net.load_state_dict({k.replace("head.out.", "head."): v.clone() for k, v in state.items()})
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    ys = torch.from_numpy(y)

    def step(idx: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(net(xs[idx]), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def epoch() -> float:
        order = torch.randperm(len(xs))
        losses = [step(order[i : i + BATCH]) for i in range(0, len(xs), BATCH)]
        return float(torch.stack(losses).mean())

    return net, step, epoch


def summary(values: list[float]) -> dict[str, float]:
    q = quartiles(values)
    return {k: q[k] for k in ("median", "iqr", "q1", "q3")}


def paired(tk_times: list[float], hand_times: list[float]) -> dict[str, float]:
    """Ratio of medians, and the quartiles of the per-pair ratios (its spread)."""
    pairs = pair_ratio(tk_times, hand_times)
    return {
        "ratio_of_medians": ratio_of_medians(tk_times, hand_times),
        **{f"pair_ratio_{k}": v for k, v in pairs.items()},
    }


def alternate(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """Time ``a()`` and ``b()`` once per round, swapping which goes first every round."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(rounds):
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for k, fn in order:
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200, help="alternated steps of each side")
    ap.add_argument("--rounds", type=int, default=7, help="rounds of fit(epochs=1) vs 1 epoch")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of fit(epochs=5) vs 5 epochs")
    ap.add_argument("--quick", action="store_true", help="40 steps, 3 and 2 rounds")
    args = ap.parse_args()
    steps, rounds, repeats = (40, 3, 2) if args.quick else (args.steps, args.rounds, args.repeats)

    import torch

    import transferkit as tk

    train, _ = tk.datasets.digits_transfer(shots=None)
    model = tk.build("torch:cnn", head=tk.Classifier(5), weights=None, seed=0)
    x = model.prepare(train.x)  # (N, 32, 32, 3) float32, normalised
    y = train.y
    engine = model.engine
    net, hand_step, hand_epoch = hand_written(x, y, engine.native.state_dict())
    engine.start_training(tk.OptimizerSpec("adam"), 0)
    engine.set_plan({g: 1.0 for g in model.spec.group_names}, head_only=False)

    rng = np.random.default_rng(0)
    warmup = 10
    batches = [rng.choice(len(x), BATCH, replace=False) for _ in range(warmup + steps)]

    def ours(idx: np.ndarray) -> torch.Tensor:
        # What Trainer.fit does per step: gather the batch, then the engine's step.
        return engine.train_step(x[idx], y[idx], LR)

    def theirs(idx: np.ndarray) -> torch.Tensor:
        return hand_step(torch.from_numpy(idx))

    # Both start from the same weights, so the first step's losses must agree.
    first_loss_diff = abs(float(ours(batches[0])) - float(theirs(batches[0])))
    for b in batches[1:warmup]:
        ours(b), theirs(b)

    step_ms: tuple[list[float], list[float]] = ([], [])
    for i, b in enumerate(batches[warmup:]):
        pair = ((0, ours), (1, theirs)) if i % 2 == 0 else ((1, theirs), (0, ours))
        for k, fn in pair:
            t0 = time.perf_counter()
            fn(b)
            step_ms[k].append((time.perf_counter() - t0) * 1e3)
    # The same batches in the same order: the weights should still be (almost) equal.
    tk_state = {k.replace("head.out.", "head."): v for k, v in engine.native.state_dict().items()}
    weight_drift = max(
        float((tk_state[k].float() - v.float()).abs().max()) for k, v in net.state_dict().items()
    )
    engine.end_training()

    seeds = iter(range(1000))

    def fit(epochs: int):
        def run() -> None:
            h = tk.fit(
                model,
                train,
                epochs=epochs,
                batch_size=BATCH,
                schedule="constant",
                lr=LR,
                verbose=0,
                seed=next(seeds),
            )
            fit_loop_s.append(sum(h["time"]))

        return run

    def hand(epochs: int):
        return lambda: [hand_epoch() for _ in range(epochs)]

    fit_loop_s: list[float] = []
    alternate(fit(1), hand(1), 1)  # warm-up of both
    fit_loop_s.clear()
    one = alternate(fit(1), hand(1), rounds)
    loop_one = list(fit_loop_s)
    fit_loop_s.clear()
    five = alternate(fit(5), hand(5), repeats)
    loop_five = list(fit_loop_s)

    steps_per_epoch = -(-len(x) // BATCH)
    result = {
        "benchmark": "torch_step_overhead",
        "model": "torch:cnn + Classifier(5), weights=None",
        "data": f"digits_transfer(shots=None) train half, {len(x)} images",
        "batch": BATCH,
        "input": list(x.shape[1:]),
        "optimizer": f"adam lr {LR}",
        "steps_per_epoch": steps_per_epoch,
        "first_step_loss_abs_diff": first_loss_diff,
        "weights_max_abs_diff_after_steps": weight_drift,
        "step": {
            "steps": steps,
            "transferkit_ms": summary(step_ms[0]),
            "hand_written_ms": summary(step_ms[1]),
            **paired(step_ms[0], step_ms[1]),
        },
        "fit_1_epoch": {
            "rounds": rounds,
            "transferkit_s": summary(one[0]),
            "hand_written_s": summary(one[1]),
            # wall time of fit() minus its epoch loops: checks, preprocessing, optimizer
            "fit_setup_s": summary([a - b for a, b in zip(one[0], loop_one, strict=True)]),
            **paired(one[0], one[1]),
        },
        "fit_5_epochs": {
            "rounds": repeats,
            "transferkit_s": summary(five[0]),
            "hand_written_s": summary(five[1]),
            "fit_setup_s": summary([a - b for a, b in zip(five[0], loop_five, strict=True)]),
            **paired(five[0], five[1]),
        },
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }

    print(
        f"torch:cnn + Linear(128, 5), batch {BATCH}, 32x32x3, Adam; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    print(f"{'':24}{'transferkit':>15}{'hand-written':>15}{'ratio':>7}{'pair ratios IQR':>17}")
    for key, label, unit in (
        ("step", f"ms/step ({steps} steps)", "ms"),
        ("fit_1_epoch", f"s/1 epoch ({rounds} rounds)", "s"),
        ("fit_5_epochs", f"s/5 epochs ({repeats} rounds)", "s"),
    ):
        r = result[key]
        cells = "".join(
            f"{r[f'{side}_{unit}']['median']:>9.3f} ±{r[f'{side}_{unit}']['iqr']:<5.3f}"
            for side in ("transferkit", "hand_written")
        )
        print(
            f"{label:24}{cells}{r['ratio_of_medians']:>7.3f}"
            f"{r['pair_ratio_q1']:>11.3f}-{r['pair_ratio_q3']:.3f}"
        )
    print("(median ± IQR; ratio = transferkit / hand-written, of medians)")
    setup = [result[k]["fit_setup_s"]["median"] for k in ("fit_1_epoch", "fit_5_epochs")]
    print(f"fit() time outside its epoch loops (median): {setup[0]:.3f} s, {setup[1]:.3f} s")
    print(
        f"first-step loss |diff| {first_loss_diff:.2e}; "
        f"max |weight diff| after {warmup + steps} steps {weight_drift:.2e}"
    )
    out = Path(__file__).parent / "results" / "torch_step_overhead.json"
    out.parent.mkdir(exist_ok=True)
    owned.write_text(out, json.dumps(result, indent=2), "benchmark result")


if __name__ == "__main__":
    main()
