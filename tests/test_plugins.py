import subprocess
import sys

import pytest

import transferkit as tk
from transferkit import errors, plugins


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.delenv("TRANSFERKIT_STRICT_PLUGINS", raising=False)
    yield plugins.reload()
    monkeypatch.undo()
    plugins.reload()


def test_builtin_adapter_is_an_entry_point_plugin(fresh):
    info = {i.name: i for i in tk.list_plugins()}["torch"]
    assert info.status == "loaded" and info.source == "transferkit_torch"
    assert "torch:resnet18" in info.backbones and info.frameworks == ["torch"]


def test_listing_backbones_imports_no_framework():
    code = (
        "import sys, transferkit as tk; names = [s.name for s in tk.list_backbones()]; "
        "from transferkit.cli import main; main(['backbones']); "
        "bad = [m for m in ('torch', 'jax', 'flax', 'tensorflow', 'keras', 'transformers') "
        "if m in sys.modules]; print('IMPORTED', bad, len(names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "IMPORTED [] " in out and "torch:cnn" in out


def test_catalog_filters_and_suggestions():
    names = [s.name for s in tk.list_backbones("torch:*")]
    assert "torch:cnn" in names and all(n.startswith("torch:") for n in names)
    assert "torch:resnet18" in [s.name for s in tk.list_backbones("resnet*")]
    assert all(s.short_name.startswith("resnet") for s in tk.list_backbones("resnet*"))
    assert [s.name for s in tk.list_backbones(tags=("digits",), framework="torch")] == [
        "torch:cnn",
        "torch:mlp",
    ]
    with pytest.raises(errors.UnknownBackboneError, match="Did you mean: torch:resnet18"):
        tk.build("torch:resnet19", head=tk.Classifier(2))
    with pytest.raises(errors.TransferkitError, match="Did you mean"):
        tk.build("torhc:cnn", head=tk.Classifier(2))


def test_head_is_a_reserved_group_name():
    with pytest.raises(errors.ConfigError, match="'head' is the task head's name"):
        tk.BackboneSpec(
            name="torch:x",
            input_kind="vector",
            input_shape=(4,),
            feature_size=4,
            groups=(("body", ("body",)), ("head", ("top",))),
            factory="x:y",
        )


class GoodPlugin:
    @tk.hookimpl
    def transferkit_register_backbones(self, register):
        register(
            tk.BackboneSpec(
                name="torch:wide_mlp",
                input_kind="image",
                input_shape=(8, 8, 1),
                feature_size=64,
                groups=(("fc1", ("fc1",)), ("fc2", ("fc2",))),
                factory="transferkit_torch.architectures:mlp",
                tags=("extra",),
            )
        )


class BrokenPlugin:
    @tk.hookimpl
    def transferkit_register_backbones(self, register):
        register(
            tk.BackboneSpec(
                name="torch:half",
                input_kind="image",
                input_shape=(8, 8, 1),
                feature_size=1,
                groups=(("a", ("a",)),),
                factory="x:y",
            )
        )
        raise RuntimeError("cannot find my weights")


def test_a_failing_plugin_is_isolated_and_reported(fresh):
    tk.register(BrokenPlugin(), "broken")
    info = tk.register(GoodPlugin(), "good")
    assert info.status == "loaded" and info.backbones == ["torch:wide_mlp"]
    listed = {i.name: i for i in tk.list_plugins()}
    assert listed["broken"].status == "failed"
    assert "RuntimeError: cannot find my weights" in listed["broken"].error
    names = {s.name for s in tk.list_backbones()}
    assert "torch:wide_mlp" in names and "torch:half" not in names  # nothing half-registered
    assert "torch:cnn" in names


def test_strict_mode_raises(fresh, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_STRICT_PLUGINS", "1")
    with pytest.raises(errors.PluginError, match="broken.*cannot find my weights"):
        tk.register(BrokenPlugin(), "broken")


def test_allow_list(fresh, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_PLUGINS", "nothing-else")
    reg = plugins.reload()
    assert reg.plugins["torch"].status == "disabled" and len(reg.catalog) == 0
    with pytest.raises(errors.UnknownBackboneError):
        tk.build("torch:cnn", head=tk.Classifier(2))


def test_framework_not_installed_names_the_pip_line(fresh):
    class Ghost(tk.Framework):
        name, extra, requires = "ghost", "ghost", ("ghost_framework_not_here",)

        def build(self, spec, head, input_shape, seed=0):
            raise AssertionError("never reached")

    class GhostPlugin:
        @tk.hookimpl
        def transferkit_register_frameworks(self, register):
            register(Ghost())

        @tk.hookimpl
        def transferkit_register_backbones(self, register):
            register(
                tk.BackboneSpec(
                    name="ghost:net",
                    input_kind="vector",
                    input_shape=(4,),
                    feature_size=4,
                    groups=(("all", ("all",)),),
                    factory="x:y",
                )
            )

    tk.register(GhostPlugin(), "ghost")
    with pytest.raises(
        errors.FrameworkNotInstalledError, match=r"pip install 'transferkit\[ghost\]'"
    ):
        tk.build("ghost:net", head=tk.Classifier(2))
