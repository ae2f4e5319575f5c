#!/usr/bin/env python
"""Ways to run the embedding model faster, side by side, on the same passages.

    HF_HUB_OFFLINE=1 python scripts/bench_precision.py --data ../shared/data [--passages 320] \\
        [--rounds 2] [--out docs/bench-precision.json]

Each variant embeds the same BBC passages (as the reindex cuts them) with the
packaged all-MiniLM-L6-v2, batch 32, 2 threads; the variants take turns for
``--rounds`` rounds and the fastest round of each counts (a warm-up call goes
first, so set-up is not timed). Quality is the cosine of each passage vector
to plain float32 ``encode``.

* ``float32``: plain ``SentenceTransformer.encode``, the baseline;
* ``bfloat16 autocast``: float32 weights, matrix products in bfloat16;
* ``bfloat16 copy``: the model's weights cast to bfloat16 (what
  ``precision = "bfloat16"`` and, on CPUs with AMX or AVX512-BF16, ``"auto"``
  run for bulk embedding);
* ``onnx float32``, ``onnx int8 (per channel)``, ``onnx uint8``: the same
  model exported offline with ``torch.onnx.export`` and run with onnxruntime,
  the int8 ones after ``quantize_dynamic``;
* ``backend ...``: every backend articles can embed on here
  (``recommender.embedders``): onnx float32, and with the openvino extra
  OpenVINO float32, bfloat16 and int8 (static, NNCF), as the reindex runs them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from recommender.config import Settings  # noqa: E402
from recommender.embedders import EmbedderSpec, candidates, load_embedder  # noqa: E402
from recommender.embedders.base import resolve_model_path  # noqa: E402
from recommender.embedders.machine import cpu_info  # noqa: E402
from recommender.embedders.torch_backend import SentenceTransformerEmbedder  # noqa: E402
from recommender.passages import chunk_article  # noqa: E402


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def sentence_transformers_variant(model, autocast: bool = False):
    import contextlib

    import torch

    def run(texts: list[str]) -> np.ndarray:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            return unit(model.encode(texts, batch_size=32, normalize_embeddings=False, convert_to_numpy=True))

    return run


def onnx_variants(model_path: str, tokenizer, folder: Path) -> dict:
    """Export the transformer with mean pooling to ONNX, quantize it, and
    return one runner per file. Empty when onnxruntime or onnx is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("onnxruntime or onnx not installed: ONNX rows skipped", file=sys.stderr)
        return {}
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    inner = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    sample = tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    fp32 = folder / "model.onnx"
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "vector": {0: "batch"}}
    torch.onnx.export(Pooled(inner), (sample["input_ids"], sample["attention_mask"]), str(fp32),
                      input_names=["input_ids", "attention_mask"], output_names=["vector"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    int8, uint8 = folder / "model-int8.onnx", folder / "model-uint8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    quantize_dynamic(str(fp32), str(uint8), weight_type=QuantType.QUInt8)

    def runner(file: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

        def run(texts: list[str]) -> np.ndarray:
            order = np.argsort([-len(t) for t in texts], kind="stable")
            out = np.empty((len(texts), 384), dtype=np.float32)
            for start in range(0, len(texts), 32):
                rows = order[start : start + 32]
                batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=256,
                                  return_tensors="np")
                feeds = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
                out[rows] = unit(session.run(None, feeds)[0])
            return out

        return run

    return {"onnx float32": runner(fp32), "onnx int8 (per channel)": runner(int8), "onnx uint8": runner(uint8)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with bbc_news.jsonl")
    parser.add_argument("--passages", type=int, default=320, help="passages to embed per variant (default: 320)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all variants, in turn (default: 2)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    settings = Settings.load({}, environ={})
    passages: list[str] = []
    with (args.data / "bbc_news.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            article = json.loads(line)
            passages += chunk_article(article["title"], article["body"], settings.chunk_words, settings.max_chunks)
            if len(passages) >= args.passages:
                break
    passages = passages[: args.passages]
    path = resolve_model_path(settings.model)
    model = SentenceTransformer(path, device="cpu")
    variants = {
        "float32": sentence_transformers_variant(model),
        "bfloat16 autocast": sentence_transformers_variant(model, autocast=True),
        "bfloat16 copy (the default on AMX CPUs)": sentence_transformers_variant(
            copy.deepcopy(model).to(torch.bfloat16)
        ),
    }
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        variants.update(onnx_variants(path, model.tokenizer, Path(tmp)))
        # The backends articles can embed on (recommender/embedders/), exported into a scratch data folder.
        cpu = cpu_info()
        print(f"CPU: {cpu['model']}; flags: {' '.join(cpu['flags'])}", file=sys.stderr, flush=True)
        scratch = Settings.load({"data_dir": Path(tmp) / "data"}, environ={})
        reference = SentenceTransformerEmbedder(model, "reference", 32, "float32")
        choices = candidates(scratch.replace(precision="float32")) + [
            c for c in candidates(scratch) if c.precision != "float32"]
        for choice in choices:
            if choice.backend != "torch":
                backend = load_embedder(EmbedderSpec.of(scratch, choice), reference)
                variants[f"backend {choice.name}"] = backend.embed
        reference = variants["float32"](passages)
        for run in variants.values():
            run(passages[:40])  # warm-up: kernels set up per shape
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        cosine: dict[str, np.ndarray] = {}
        for number in range(args.rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                vectors = run(passages)
                seconds[name].append(time.perf_counter() - start)
                cosine[name] = (vectors * reference).sum(axis=1)
                print(f"  round {number + 1} {name}: {seconds[name][-1]:.1f}s", file=sys.stderr, flush=True)

    base = min(seconds["float32"])
    results = {
        "passages": len(passages), "rounds": args.rounds, "torch": torch.__version__, "cpu": cpu,
        "variants": {
            name: {"seconds": [round(s, 2) for s in times], "speedup": round(base / min(times), 2),
                   "cosine_min": round(float(cosine[name].min()), 4), "cosine_mean": round(float(cosine[name].mean()), 5)}
            for name, times in seconds.items()
        },
    }
    print(f"{len(passages)} BBC passages, batch 32, 2 threads, fastest of {args.rounds} rounds; "
          f"CPU {cpu['model']} ({' '.join(cpu['flags'])})\n")
    print("| variant | seconds | vs float32 | cosine min | cosine mean |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results["variants"].items():
        print(f"| {name} | {min(r['seconds']):.1f} | {r['speedup']:.2f}x | {r['cosine_min']:.4f} | {r['cosine_mean']:.5f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
