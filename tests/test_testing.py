"""``transferkit.testing``: a third party's tests collect and run the conformance suite.

The example third-party plugin (examples/tinyconv-plugin) runs the suite the way its own
tests would, found through real entry-point discovery: as in test_example_plugin.py, the
``.dist-info`` that pip would write goes into a temporary site directory on ``sys.path``.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from transferkit import plugins
from transferkit.testing import SENTENCES, AdapterConformance, Subject

pytest_plugins = ["pytester"]

SRC = Path(__file__).resolve().parents[1] / "examples" / "tinyconv-plugin" / "src"

#: the suite's tests by name (the optimizer tests once per optimizer)
SUITE = {name for name in dir(AdapterConformance) if name.startswith("test_")}


def test_a_subclass_collects_the_whole_suite_and_the_base_class_nothing(pytester):
    pytester.makepyfile(
        test_third_party="""
        from transferkit.testing import SENTENCES, AdapterConformance, Subject

        class TestMine(AdapterConformance):
            subject = Subject(backbone="torch:cnn", input_shape=(16, 16, 3))

        class MineBase(AdapterConformance):  # an intermediate base: not collected
            __test__ = False
        """
    )
    result = pytester.runpytest_inprocess("--collect-only", "-q")
    ids = [line for line in result.outlines if line.startswith("test_third_party.py::")]
    assert all(i.startswith("test_third_party.py::TestMine::test_") for i in ids), ids
    assert {i.split("::")[2].split("[")[0] for i in ids} == SUITE
    # two tests run once per optimizer (3), the trajectory test at 1 and 5 steps, the
    # BatchNorm-modes test once per mode (3)
    assert len(ids) == len(SUITE) + 7


def test_inapplicable_tests_skip_naming_the_flag_and_a_missing_subject_fails(pytester):
    pytester.makepyfile(
        test_third_party="""
        from transferkit.testing import SENTENCES, AdapterConformance, Subject

        class TestScratchOnly(AdapterConformance):
            subject = Subject(backbone="torch:cnn", pretrained=False, reference=False,
                              trains_backbone=False)

        class TestNoSubject(AdapterConformance):
            pass
        """
    )
    result = pytester.runpytest_inprocess(
        "-rs",
        "-k",
        "TestScratchOnly and (pretrained_weights or linear_probe or frozen_groups or gradual)"
        " or TestNoSubject and bad_inputs",
    )
    result.assert_outcomes(skipped=6, errors=1)
    text = result.stdout.str()
    assert "SKIPPED [3] " in text and text.count("subject.reference is False") == 1
    assert text.count("subject.pretrained is False") == 1
    assert text.count("subject.trains_backbone is False") == 2
    assert "TestNoSubject names no backbone to test" in text


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
class TestExamplePlugin(AdapterConformance):
    """A torch backbone without pretrained weights or a reference architecture."""

    subject = Subject(backbone="torch:tinyconv", pretrained=False, reference=False)

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def installed(cls, tmp_path_factory):
        """transferkit-tinyconv "installed" for the class: its metadata and source on
        sys.path, and the registry rediscovered with it (and without it afterwards)."""
        site = tmp_path_factory.mktemp("site")
        info = site / "transferkit_tinyconv-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: transferkit-tinyconv\nVersion: 0.1.0\n"
        )
        (info / "entry_points.txt").write_text("[transferkit]\ntinyconv = transferkit_tinyconv\n")
        with pytest.MonkeyPatch.context() as mp:
            mp.syspath_prepend(str(site))
            mp.syspath_prepend(str(SRC))
            plugins.reload()
            yield
        for name in [m for m in sys.modules if m.split(".")[0] == "transferkit_tinyconv"]:
            del sys.modules[name]
        plugins.reload()


def test_subject_inputs_of_each_kind():
    image = Subject(backbone="torch:cnn", input_shape=(16, 16, 3)).inputs(5, seed=1)
    assert image.shape == (5, 16, 16, 3) and image.dtype == "float32"
    assert image.min() >= 0 and image.max() <= 1
    text = Subject(backbone="hf:all-MiniLM-L6-v2").inputs(40, seed=0)
    assert len(text) == 40 and all(isinstance(t, str) and t for t in text)
    assert len(set(text)) == len(SENTENCES) and len(set(text[:24])) == 24
    again = Subject(backbone="hf:all-MiniLM-L6-v2").inputs(40, seed=0)
    assert text == again
