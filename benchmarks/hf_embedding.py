"""Embedding throughput of ``hf:all-MiniLM-L6-v2`` through transferkit against calling
the model directly.

Both sides embed the same BBC News articles with the same batch size and max_length:
transferkit through ``model.features(texts, batch_size=...)`` (input checks,
tokenisation with truncation and dynamic padding, mean pooling, L2 normalisation;
its feature memo is cleared before every run so each text is really embedded), and
the direct side as a Transformers user writes it: ``AutoTokenizer`` + ``AutoModel``
under ``torch.inference_mode``, mean pooling over the attention mask, normalised.
The two run alternately, ``--repeats`` times each; the report gives texts/s (median)
for each and the ratio of medians, and checks that both produce the same features.

    python benchmarks/hf_embedding.py [--texts 256] [--batch 64] [--max-length 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit import owned
from transferkit.bench.stats import median, pair_ratio, ratio_of_medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "hf_embedding.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from transferkit_hf.encoder import minilm_path

    texts = tk.datasets.bbc_news_all().x[: args.texts]
    model = tk.build("hf:all-MiniLM-L6-v2", head=tk.Classifier(5), input_shape=(args.max_length,))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    direct_model = AutoModel.from_pretrained(minilm_path()).eval()

    def ours() -> np.ndarray:
        model.engine.clear_feature_memo()
        return model.features(texts, batch_size=args.batch)

    @torch.inference_mode()
    def direct() -> np.ndarray:
        out = []
        for i in range(0, len(texts), args.batch):
            enc = tokenizer(
                texts[i : i + args.batch],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            hidden = direct_model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    import warnings

    warnings.filterwarnings("ignore", category=tk.errors.TruncationWarning)
    max_diff = float(np.abs(ours() - direct()).max())  # also the warm-up of both
    times: dict[str, list[float]] = {"transferkit": [], "direct": []}
    for i in range(args.repeats):
        pair = (("transferkit", ours), ("direct", direct))
        for name, fn in pair if i % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        print(
            f"  round {i}: transferkit {len(texts) / times['transferkit'][-1]:.1f} texts/s, "
            f"direct {len(texts) / times['direct'][-1]:.1f} texts/s",
            flush=True,
        )
    rate = {k: len(texts) / median(v) for k, v in times.items()}
    ratio = ratio_of_medians(times["transferkit"], times["direct"])
    pairs = pair_ratio(times["transferkit"], times["direct"])
    result = {
        "benchmark": "hf_embedding",
        "command": f"python benchmarks/hf_embedding.py --texts {args.texts} --batch {args.batch} "
        f"--max-length {args.max_length} --repeats {args.repeats}",
        "model": "hf:all-MiniLM-L6-v2",
        "texts": len(texts),
        "batch": args.batch,
        "max_length": args.max_length,
        "features_max_abs_diff": max_diff,
        "seconds": times,
        "texts_per_s": rate,
        "time_ratio_transferkit_over_direct": ratio,
        "pair_ratio_min_max": [pairs["min"], pairs["max"]],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    print(
        f"\ntransferkit {rate['transferkit']:.1f} texts/s, direct {rate['direct']:.1f} texts/s; "
        f"time ratio {ratio:.3f} (pairs {pairs['min']:.3f}-{pairs['max']:.3f}); "
        f"features max abs diff {max_diff:.1e}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    owned.write_text(Path(args.out), json.dumps(result, indent=2), "benchmark result")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
