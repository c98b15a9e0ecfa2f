"""timm's own fine-tuning recipe through transferkit: a timm ConvNeXt, layer-wise
learning-rate decay over timm's blocks (as timm's ``--layer-decay``), and LoRA as the
parameter-efficient alternative, on faces vs. non-faces.

    python examples/timm_layer_decay.py                          # random weights (offline)
    python examples/timm_layer_decay.py convnext_atto.d2_in1k    # timm's pretrained tag,
                                                                 # from its cache or a download

Needs the ``zoo`` extra (timm). With random weights the numbers mean nothing; the point is
the recipe. ``transferkit backbones 'timm:convnext*'`` lists the alternatives.
"""

import sys

import transferkit as tk

name = sys.argv[1] if len(sys.argv) > 1 else "convnext_atto"
train, test = tk.datasets.faces(shots=10, seed=0)
for freeze in (tk.freeze.FullFineTune(lr_decay=0.75), tk.freeze.LoRA(r=8)):
    model = tk.build(
        f"timm:{name}",
        head=tk.Classifier(len(train.classes)),
        weights="pretrained" if "." in name else None,  # a tag: timm's pretrained weights
        input_shape=(64, 64, 3),  # ConvNeXt takes any size down to its stride, 32
    )
    print(model.spec.group_names[:3], "...", len(model.spec.groups), "blocks")
    tk.fit(model, train, freeze=freeze, epochs=3, batch_size=8, lr=1e-3, seed=0, verbose=0)
    print(type(freeze).__name__, model.evaluate(test))
