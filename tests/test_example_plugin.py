"""The example third-party plugin (examples/tinyconv-plugin), found through real
entry-point discovery.

Instead of pip installing the example (slow), each test writes the ``.dist-info``
metadata pip would write into a temporary directory and puts that directory and the
example's ``src`` on ``sys.path``: ``importlib.metadata`` then finds the entry point
exactly as it finds an installed package's.
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors, plugins

pytest.importorskip("torch")

SRC = Path(__file__).resolve().parents[1] / "examples" / "tinyconv-plugin" / "src"
BROKEN_REASON = "transferkit_broken_example needs the package 'no_such_dependency'"


def write_dist_info(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """What pip installs beside a package: enough metadata for ``importlib.metadata``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[transferkit]\n{lines}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site directory where transferkit-tinyconv is "installed"; the registry is
    rediscovered with it, and without it again afterwards."""
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    site = tmp_path / "site"
    write_dist_info(site, "transferkit-tinyconv", "0.1.0", {"tinyconv": "transferkit_tinyconv"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(SRC))
    plugins.reload()
    yield site
    monkeypatch.undo()
    forget_plugin_modules()
    plugins.reload()


def forget_plugin_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "transferkit_tinyconv"]:
        del sys.modules[name]


@pytest.fixture
def broken(site):
    """A second "installed" plugin whose module raises ImportError when imported."""
    write_dist_info(site, "transferkit-broken", "0.0.1", {"broken": "transferkit_broken_example"})
    (site / "transferkit_broken_example.py").write_text(f"raise ImportError({BROKEN_REASON!r})\n")
    return site


def test_entry_point_is_discovered(site):
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="transferkit")}
    assert eps["tinyconv"] == "transferkit_tinyconv"
    assert [s.name for s in tk.list_backbones("torch:tiny*")] == ["torch:tinyconv"]
    spec = tk.list_backbones("tinyconv")[0]
    assert spec.input_kind == "image" and spec.input_shape == (16, 16, 3)
    assert spec.feature_size == 32 and not spec.pretrained
    info = {i.name: i for i in tk.list_plugins()}["tinyconv"]
    assert info.status == "loaded" and info.error is None
    assert info.source == "transferkit_tinyconv" and info.version == "0.1.0"
    assert info.hooks == ["transferkit_register_backbones"]
    assert info.backbones == ["torch:tinyconv"] and info.frameworks == []


def test_listing_imports_no_torch(site):
    env = dict(os.environ)
    env.pop(plugins.ALLOW_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), str(SRC), env.get("PYTHONPATH")) if p
    )
    code = (
        "import sys, transferkit as tk; "
        "names = [s.name for s in tk.list_backbones('torch:tiny*')]; "
        "from transferkit.cli import main; main(['backbones', 'torch:tiny*']); "
        "print('NAMES', names); print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert "NAMES ['torch:tinyconv']" in out
    assert "TORCH False" in out


def test_build_fit_save_load(site, tmp_path):
    train, test = tk.datasets.faces(shots=5, seed=0)
    model = tk.build("torch:tinyconv", head=tk.Classifier(2), weights=None)
    # Every backbone weight (BatchNorm statistics included) is in a layer group.
    groups = {
        model.spec.group_of(k.removeprefix("backbone."))
        for k in model.get_weights()
        if k.startswith("backbone.")
    }
    assert groups == {"block1", "block2"}
    assert model.features(test.x[:4]).shape == (4, 32)

    history = tk.fit(model, train, val=test, epochs=2, verbose=0, seed=0)
    assert len(history) == 2 and len(history["loss"]) == 2

    probs = model.predict(test.x)
    assert probs.shape == (len(test), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    loaded = tk.load(model.save(tmp_path / "model"))
    assert loaded.spec.name == "torch:tinyconv"
    np.testing.assert_allclose(loaded.predict(test.x), probs, atol=1e-6)


def test_a_broken_plugin_is_reported_and_isolated(broken):
    plugins.reload()
    listed = {i.name: i for i in tk.list_plugins()}
    assert listed["broken"].status == "failed"
    assert listed["broken"].error == f"ImportError: {BROKEN_REASON}"
    assert listed["broken"].version == "0.0.1"
    assert listed["tinyconv"].status == "loaded" and listed["torch"].status == "loaded"
    names = {s.name for s in tk.list_backbones()}
    assert {"torch:tinyconv", "torch:cnn"} <= names


def test_strict_mode_raises_on_the_broken_plugin(broken, monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    with pytest.raises(errors.PluginError, match="'broken' failed to load.*no_such_dependency"):
        plugins.reload()


def test_allow_list_disables_the_plugin(site, monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "torch")
    forget_plugin_modules()  # the fixture's discovery imported it
    plugins.reload()
    listed = {i.name: i for i in tk.list_plugins()}
    assert listed["tinyconv"].status == "disabled" and listed["tinyconv"].backbones == []
    assert listed["torch"].status == "loaded"
    assert tk.list_backbones("torch:tiny*") == []
    assert "transferkit_tinyconv" not in sys.modules


def test_two_distributions_claiming_one_plugin_name_are_reported(site):
    write_dist_info(site, "zz-impostor", "9.9", {"tinyconv": "zz_impostor_module"})
    reg = plugins.reload()
    clash = [i for i in reg.plugins.values() if i.status == "failed"]
    assert len(clash) == 1 and "already used by distribution" in clash[0].error
    assert reg.plugins["tinyconv"].status == "loaded"  # the first one found still works
