"""ImageNet features for a task with 5 labelled photos per class: faces vs. non-faces.

python examples/faces_imagenet_features.py
"""

import transferkit as tk

train, test = tk.datasets.faces(shots=5, seed=0)
model = tk.build("torch:efficientnet_lite0", head=tk.Classifier(2), input_shape=(64, 64, 3))
# The backbone stays frozen: its features are computed once and cached.
tk.fit(
    model,
    train,
    freeze=tk.freeze.FeatureExtraction(),
    epochs=100,
    lr=1e-3,
    batch_size=16,
    seed=0,
    verbose=0,
)
print(model.evaluate(test))
