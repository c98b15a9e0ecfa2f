"""The conformance suite (``transferkit.testing``) on every built-in adapter installed here.

Each class is what a third-party framework's tests would hold; the suite's tests are
collected for each and skipped when its framework is not installed.
"""

import pytest

from transferkit.plugins import registry
from transferkit.testing import AdapterConformance, Subject


def adapter(name: str) -> pytest.MarkDecorator:
    """Skip the class unless framework ``name`` is registered and installed."""
    fw = registry().frameworks.get(name)
    missing = ["its adapter"] if fw is None else fw.missing()
    return pytest.mark.skipif(
        bool(missing), reason=f"{name} needs {', '.join(missing)}, which is not installed"
    )


@adapter("torch")
class TestTorch(AdapterConformance):
    subject = Subject(backbone="torch:cnn", input_shape=(16, 16, 3))


@adapter("flax")
class TestFlax(AdapterConformance):
    subject = Subject(backbone="flax:cnn", input_shape=(16, 16, 3))


@adapter("keras")
class TestKeras(AdapterConformance):
    subject = Subject(backbone="keras:cnn", input_shape=(16, 16, 3))


@adapter("hf")
class TestHF(AdapterConformance):
    """A 2-layer BERT in a local directory: text inputs, no reference architecture."""

    @pytest.fixture(name="subject")
    def make_subject(self, tiny_bert):
        return Subject(backbone=f"hf:{tiny_bert}", reference=False)
