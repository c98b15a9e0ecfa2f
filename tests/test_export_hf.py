"""Hugging Face text encoders export to ONNX and ``torch.export`` from token ids; the
tokenizer is saved beside the export, and the export runs as a user would run it."""

import json

import numpy as np
import pytest

import transferkit as tk
from transferkit.errors import ConfigError

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

TEXTS = ["stocks fell", "the team won the cup final " * 20, "a new album", "rain", "x y z"]


@pytest.fixture(scope="module")
def fitted(tiny_bert):
    rng = np.random.default_rng(0)
    words = ["market", "goal", "film", "vote", "song", "match", "profit", "actor"]
    x = [" ".join(rng.choice(words, 6)) for _ in range(12)]
    y = np.arange(12) % 3
    m = tk.build(f"hf:{tiny_bert}", head=tk.Classifier(3), weights=None, input_shape=(32,),
                 classes=["biz", "sport", "arts"])  # fmt: skip
    tk.fit(m, (x, y), freeze=tk.freeze.FullFineTune(), epochs=1, batch_size=4, verbose=0)
    return m


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_text_export_runs_from_its_own_tokenizer(fitted, fmt, tmp_path):
    from transformers import AutoTokenizer

    path = fitted.export(tmp_path / "news", format=fmt)
    meta = json.loads((tmp_path / f"{path.name}.json").read_text())
    assert meta["input"]["names"] == ["input_ids", "attention_mask"]
    assert meta["input"]["max_length"] == 32 and meta["classes"] == ["biz", "sport", "arts"]
    tok = AutoTokenizer.from_pretrained(tmp_path / meta["input"]["tokenizer"])
    for texts in (TEXTS, TEXTS[:1]):  # batch 5 and 1; one text is truncated at 32 tokens
        enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        else:
            import torch

            prog = torch.export.load(str(path)).module()
            got = prog(torch.from_numpy(ids), torch.from_numpy(mask)).detach().numpy()
        np.testing.assert_allclose(got, fitted.predict(texts), atol=1e-5)
        np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)


def test_lora_text_model_is_refused(tiny_bert, tmp_path):
    m = tk.build(f"hf:{tiny_bert}", head=tk.Classifier(2), weights=None, input_shape=(16,))
    m.add_peft({"kind": "lora", "r": 2, "alpha": 4.0, "target": ["query", "value"],
                "dropout": 0.0})  # fmt: skip
    with pytest.raises(ConfigError, match="'lora' modules cannot be exported"):
        m.export(tmp_path / "m.onnx", format="onnx")
    assert list(tmp_path.iterdir()) == []
