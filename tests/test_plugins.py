import json
import subprocess
import sys

import numpy as np
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
    assert "torch:resnet18" in info.backbones  # and the model zoos PyTorch users have
    assert info.frameworks == ["torch", "timm", "torchvision"]


def test_listing_backbones_imports_no_framework():
    code = (
        "import sys, transferkit as tk; names = [s.name for s in tk.list_backbones()]; "
        "from transferkit.cli import main; main(['backbones']); "
        "bad = [m for m in ('torch', 'jax', 'flax', 'tensorflow', 'keras', 'transformers', "
        "'timm', 'torchvision') if m in sys.modules]; print('IMPORTED', bad, len(names))"
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
    assert reg.plugins["nothing-else"].status == "failed"  # no plugin provides it
    assert "which no installed plugin provides" in reg.plugins["nothing-else"].error
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


# --- name clashes and the allow-list --------------------------------------------------


class FakeDist:
    def __init__(self, name, version="1.0"):
        self.name, self.version = name, version


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points`` yields, for a plugin object in memory."""

    def __init__(self, name, obj, dist="transferkit-evil"):
        self.name, self.value, self.group = name, f"{dist.replace('-', '_')}:plugin", "transferkit"
        self.dist = FakeDist(dist)
        self._obj = obj

    def load(self):
        return self._obj


def spec(name):
    return tk.BackboneSpec(
        name=name,
        input_kind="image",
        input_shape=(8, 8, 1),
        feature_size=64,
        groups=(("fc1", ("fc1",)), ("fc2", ("fc2",))),
        factory="transferkit_torch.architectures:mlp",
    )


class Impostor(tk.Framework):
    name, extra, requires = "torch", "torch", ()

    def build(self, spec, head, input_shape, seed=0):
        raise AssertionError("never used")


class EvilPlugin:
    """Takes the torch framework and torch:cnn, and brings one backbone of its own."""

    @tk.hookimpl
    def transferkit_register_frameworks(self, register):
        register(Impostor())

    @tk.hookimpl
    def transferkit_register_backbones(self, register):
        register(spec("torch:cnn"))
        register(spec("torch:evil_extra"))


class OnlyClashes:
    @tk.hookimpl
    def transferkit_register_backbones(self, register):
        register(spec("torch:mlp"))


def with_fake_plugins(monkeypatch, *fakes):
    """Make entry-point discovery find the installed plugins and ``fakes``."""
    import importlib.metadata

    real = list(importlib.metadata.entry_points(group=plugins.GROUP))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [*real, *fakes])


def builtin_torch_backbones():
    reg = plugins.Registry()
    reg.load_entry_points()
    return set(reg.plugins["torch"].backbones)


def test_a_clash_never_disables_a_builtin_plugin(monkeypatch):
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    torch_backbones = builtin_torch_backbones()
    assert "torch:cnn" in torch_backbones
    # 'aaa_evil' sorts before 'torch': the built-ins must load first all the same.
    with_fake_plugins(monkeypatch, FakeEntryPoint("aaa_evil", EvilPlugin()))
    reg = plugins.Registry()
    reg.load_entry_points()

    assert [i.name for i in reg.plugins.values() if i.builtin][0] == list(reg.plugins)[0]
    torch = reg.plugins["torch"]
    assert torch.status == "loaded" and set(torch.backbones) == torch_backbones
    assert torch.frameworks == ["torch", "timm", "torchvision"] and not torch.warnings
    assert all(reg.catalog.origin[n] == "torch" for n in torch_backbones)
    assert type(reg.frameworks["torch"]).__module__.startswith("transferkit_torch")
    assert reg.framework_origin["torch"] == "torch"

    evil = reg.plugins["aaa_evil"]
    assert evil.status == "loaded" and evil.error is None
    assert evil.backbones == ["torch:evil_extra"] and evil.frameworks == []  # the rest is kept
    assert reg.catalog.origin["torch:evil_extra"] == "aaa_evil"
    assert len(evil.warnings) == 2
    assert any(
        "backbone 'torch:cnn' from plugin 'aaa_evil' clashes with the one registered by "
        "plugin 'torch'; kept plugin 'torch''s" in w
        for w in evil.warnings
    )
    assert any("framework 'torch' from plugin 'aaa_evil'" in w for w in evil.warnings)


def test_a_plugin_whose_every_name_clashes_is_failed(monkeypatch):
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    with_fake_plugins(monkeypatch, FakeEntryPoint("aaa_copy", OnlyClashes()))
    reg = plugins.Registry()
    reg.load_entry_points()
    info = reg.plugins["aaa_copy"]
    assert info.status == "failed" and info.backbones == []
    assert "'torch:mlp' from plugin 'aaa_copy'" in info.error and "plugin 'torch'" in info.error
    assert reg.catalog.origin["torch:mlp"] == "torch"


def test_strict_mode_raises_on_a_clash_after_the_builtins_loaded(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    torch_backbones = builtin_torch_backbones()
    with_fake_plugins(monkeypatch, FakeEntryPoint("aaa_evil", EvilPlugin()))
    reg = plugins.Registry()
    with pytest.raises(errors.PluginError, match=r"'aaa_evil'.*clashes.*plugin 'torch'"):
        reg.load_entry_points()
    assert reg.plugins["torch"].status == "loaded"
    assert torch_backbones <= {s.name for s in reg.catalog.filter()}
    assert all(reg.catalog.origin[n] == "torch" for n in torch_backbones)


def test_a_third_party_plugin_named_like_a_builtin_does_not_replace_it(monkeypatch):
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    with_fake_plugins(monkeypatch, FakeEntryPoint("torch", EvilPlugin(), dist="aaa-impostor"))
    reg = plugins.Registry()
    reg.load_entry_points()
    assert reg.plugins["torch"].builtin and reg.plugins["torch"].status == "loaded"
    assert reg.plugins["torch (aaa-impostor)"].status == "failed"
    assert "torch:evil_extra" not in reg.catalog


def test_clashes_are_shown_by_the_plugins_command(fresh, monkeypatch, capsys):
    from transferkit.cli import main

    with_fake_plugins(monkeypatch, FakeEntryPoint("aaa_evil", EvilPlugin()))
    plugins.reload()
    assert main(["plugins"]) == 0  # a partly kept plugin is loaded, with warnings
    out = capsys.readouterr().out
    assert "warning: backbone 'torch:cnn' from plugin 'aaa_evil' clashes" in out
    assert main(["plugins", "--json"]) == 0
    listed = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert listed["aaa_evil"]["backbones"] == ["torch:evil_extra"]
    assert len(listed["aaa_evil"]["warnings"]) == 2 and listed["torch"]["warnings"] == []
    assert "torch:cnn" in {s.name for s in tk.list_backbones("torch:*")}


def test_unknown_allow_list_names_are_reported(fresh, monkeypatch, capsys):
    from transferkit.cli import main

    monkeypatch.setenv(plugins.ALLOW_ENV, "torch,nope")
    reg = plugins.reload()
    assert reg.plugins["torch"].status == "loaded" and "torch:cnn" in reg.catalog
    nope = reg.plugins["nope"]
    assert nope.status == "failed"
    assert nope.error.startswith("TRANSFERKIT_PLUGINS names 'nope', which no installed plugin")
    assert "installed: " in nope.error and "torch" in nope.error
    assert main(["plugins"]) == 1
    assert "TRANSFERKIT_PLUGINS names 'nope'" in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 1
    capsys.readouterr()

    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    with pytest.raises(errors.PluginError, match="TRANSFERKIT_PLUGINS names 'nope'"):
        plugins.reload()
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transferkit: error: TRANSFERKIT_PLUGINS names 'nope'")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_engine_without_group_features_says_so():
    # a third-party engine that implements only the abstract methods
    from transferkit.framework import Engine

    stubs = {name: lambda self, *a, **k: None for name in Engine.__abstractmethods__}
    minimal = type("MinimalEngine", (Engine,), stubs)()
    with pytest.raises(errors.ConfigError, match="MinimalEngine cannot give features per layer"):
        minimal.group_features(np.zeros((1, 4), np.float32))
