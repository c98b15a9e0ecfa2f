"""The three questions, answered before fitting: which backbone, which layers, which lr.

python examples/choose.py [framework]   (torch by default)
"""

import sys

import transferkit as tk

fw = sys.argv[1] if len(sys.argv) > 1 else "torch"
train, test = tk.datasets.faces(shots=10, seed=0)

# Which backbone, and how deep? One forward pass per candidate, scored by LogME.
ranking = tk.rank(
    [f"{fw}:cnn", (f"{fw}:efficientnet_lite0", {"input_shape": (64, 64, 3)})],
    train,
    layers=True,
)
print(ranking.to_markdown())
best = ranking.rows[0]
print(f"\nbest: {best.name}; suggested freeze: {best.suggested_freeze}")

# Which learning rate? The range test on the real training step, under that policy.
shape = (64, 64, 3) if "lite0" in best.name else None
model = tk.build(best.name, head=tk.Classifier(2), input_shape=shape)
policy = best.freeze_policy()  # "TrainLast(2)" -> tk.freeze.TrainLast(2)
finder = tk.find_lr(model, train, freeze=policy, batch_size=16)
print(finder)

tk.fit(model, train, freeze=policy, lr=finder.suggestion, epochs=10, batch_size=16, seed=0)
print("test:", model.evaluate(test))
