"""The classic Keras transfer-learning recipe in one call: VGG16 without its top, the
first blocks frozen, Flatten -> Dense(1024, relu) -> softmax, on faces vs. non-faces.

    python examples/keras_vgg16_recipe.py            # random VGG16 weights (works offline)
    python examples/keras_vgg16_recipe.py imagenet   # Keras's ImageNet weights, from its
                                                     # cache ~/.keras/models/ or a download

With random weights the backbone is no better than pixels; the point here is the recipe.
With ImageNet weights (or ``weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"``)
it is the real thing.
"""

import sys

import transferkit as tk

imagenet = len(sys.argv) > 1 and sys.argv[1] == "imagenet"
train, test = tk.datasets.faces(shots=10, seed=0)
model = tk.build(
    "keras:vgg16",
    head=tk.Classifier(len(train.classes), hidden=(1024,)),  # Flatten -> Dense(1024, relu)
    weights="pretrained" if imagenet else None,
    input_shape=(64, 64, 3),  # the 25x25 faces are resized; 2x2x512 = 2048 features
)
print(model)
history = tk.fit(
    model,
    train,
    val=test,
    freeze=tk.freeze.TrainLast(3),  # blocks 1-2 frozen, blocks 3-5 and the head train
    epochs=5,
    batch_size=8,
    lr=1e-4,
    seed=0,
)
print(model.evaluate(test))  # {'loss': ..., 'accuracy': ..., 'macro_f1': ...}
