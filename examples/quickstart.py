"""Fine-tune the pretrained cnn on 10 labelled digits per class, in any framework.

python examples/quickstart.py [torch:cnn]
"""

import sys

import transferkit as tk

name = sys.argv[1] if len(sys.argv) > 1 else "torch:cnn"
train, test = tk.datasets.digits_transfer(shots=10, seed=0)
model = tk.build(name, head=tk.Classifier(num_classes=5))
tk.fit(
    model,
    train,
    val=test,
    freeze=tk.freeze.GradualUnfreeze(every=2),
    epochs=30,
    batch_size=16,
    lr=1e-3,
    seed=0,
)
print(name, model.evaluate(test))
model.save("runs/quickstart")
print("reloaded:", tk.load("runs/quickstart").evaluate(test)["accuracy"])
