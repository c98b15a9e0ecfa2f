"""The adapter conformance suite: the tests every framework adapter and backbone must pass.

The built-in adapters run it, and so can a third-party package. Subclass
:class:`AdapterConformance` in your own tests, name the backbone in a :class:`Subject`,
and pytest collects the whole suite for it (the pattern of pandas' extension-array base
tests)::

    # tests/test_conformance.py of a third-party package
    from transferkit.testing import AdapterConformance, Subject


    class TestMyFramework(AdapterConformance):
        subject = Subject(backbone="myfw:cnn", input_shape=(16, 16, 3))

    # tests/conftest.py: failed asserts in the suite then show their values
    import pytest

    pytest.register_assert_rewrite("transferkit.testing")

then ``pytest tests/test_conformance.py``. The suite needs pytest (not a dependency of
transferkit itself). Every test is a method of the class, so ``-k``, ``-x`` and
``--deselect`` work as usual; a test that does not apply to the subject (see the flags of
:class:`Subject`) is skipped with a reason that names the flag. A subject that can only
be made at run time (a model written to a temporary directory, say) comes from a fixture
that overrides :meth:`AdapterConformance.make_subject`::

    class TestMyTextEncoder(AdapterConformance):
        @pytest.fixture(name="subject")
        def make_subject(self, tiny_model_dir):  # a fixture of yours that saves one
            return Subject(backbone=f"myfw:{tiny_model_dir}", reference=False)

The tests are small (24 examples, 16x16 images, a few epochs) and check behaviour users
rely on: shapes, repeatable seeded training that learns, frozen layer groups that do not
move and hold no optimizer state, feature caching that changes nothing, every freeze
policy and optimizer, regression heads, save/load, early stopping, exact resume from a
checkpoint, and the same errors for the same mistakes in every framework.

The reference architecture ``cnn``
----------------------------------

A new *framework* gets the full suite, cross-framework parity included, by realising the
small reference architecture ``cnn`` (``transferkit.reference.REFERENCE["cnn"]``; the
built-in realisations are ``plugins/transferkit_{torch,flax,keras}/architectures.py``)
and registering it with ``transferkit.reference.reference_spec("myfw", "cnn",
"myfw_pkg.architectures:cnn")``, which gives the backbone ``myfw:cnn`` its metadata.
The network maps normalised channels-last float32 images (core feeds ``(x - 0.5) / 0.5``)
to 128 features:

* four stages ``stage1`` .. ``stage4``, each a 3x3 convolution without bias (padding 1 on
  every side, as PyTorch's ``padding=1``; strides 1, 2, 2, 2; 32, 64, 128, 128 output
  channels), BatchNorm (epsilon 1e-5, PyTorch momentum 0.1, i.e. 0.9 in Keras/Flax
  terms) and ReLU; then the global average over height and width;
* one layer group per stage, input to output: ``stage1``, ``stage2``, ``stage3``,
  ``stage4``, each owning the parameters under its own name;
* canonical parameter names and PyTorch layouts, per stage ``N``:
  ``stageN.conv.weight`` ``(out, in, 3, 3)``, ``stageN.bn.weight``, ``stageN.bn.bias``,
  ``stageN.bn.running_mean``, ``stageN.bn.running_var``. The engine's ``get_weights``
  prefixes them with ``backbone.``; the head is ``head.out.weight|bias`` (and
  ``head.hidden.<i>.weight|bias``);
* pretrained weights: ``transferkit/pretrained/cnn.safetensors``, shipped with
  transferkit, holding exactly those 20 arrays (trained on digits 0-4); the spec's
  weight source finds it, and core loads it into every realisation unchanged.

One thing the suite asks of an engine beyond :class:`transferkit.Engine`'s contract: the
keys of ``training_state()`` name the parameter each optimizer slot belongs to (its
canonical name or native path, as ``opt.backbone.stage4.conv.weight.exp_avg`` or
``opt.[0].mu['backbone']['stage4']...``), so that frozen groups can be seen to hold none.

A third-party *backbone* for an existing framework (``torch:mynet``) runs the suite with
``reference=False`` (and ``pretrained=False`` if it has no weights).
"""

from __future__ import annotations

from .conformance import AdapterConformance
from .subject import SENTENCES, Subject, parity_framework

__all__ = ["AdapterConformance", "Subject", "SENTENCES", "parity_framework"]
