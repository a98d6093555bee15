"""Worker: ONNX Runtime as fastembed runs it, on a local ONNX export (runs in the anchor venv).

``python -m benchmarks.ort_worker --texts F --model-dir D --threads N``: fastembed's own
``TextEmbedding``, the folder registered as a custom model (mean pooling, L2-normalised, as
all-MiniLM-L6-v2) and loaded from ``D`` without the network; its session options are
fastembed's (``ORT_ENABLE_ALL``, ``threads`` intra- and inter-op). Each run command may carry
``{"batch_size": n}``. ``--sorted``: texts batched by length (longest first, order restored
after), the batching sentence-transformers and crab do; fastembed itself batches in input
order and pads each batch to its longest text. ``--raw``: no fastembed, an ONNX Runtime
session with fastembed's options fed by the folder's ``tokenizers`` tokenizer, batches sorted
by length (the engine alone); ``--max-length N`` cuts texts at N tokens there (512 unless
given). Speaks the protocol of ``benchmarks._serve``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from benchmarks._serve import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--sorted", action="store_true", help="batch texts by length")
    parser.add_argument("--raw", action="store_true", help="ONNX Runtime without fastembed")
    parser.add_argument("--max-length", type=int, default=512, help="with --raw: token limit")
    args = parser.parse_args()
    if args.raw:
        _raw(args)
        return

    import fastembed
    import onnxruntime
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"local/{args.model_dir}"
    TextEmbedding.add_custom_model(
        name,
        pooling=PoolingType.MEAN,
        normalization=True,
        sources=ModelSource(hf="local/none"),
        dim=384,
        model_file="onnx/model.onnx",
    )
    model = TextEmbedding(
        name,
        threads=args.threads,
        specific_model_path=args.model_dir,
        local_files_only=True,
    )

    def embed(texts: list[str], options: dict[str, Any]) -> Any:
        batch = int(options.get("batch_size", 32))
        if not args.sorted:
            return [v.tolist() for v in model.embed(texts, batch_size=batch)]
        return by_length(texts, lambda ordered: model.embed(ordered, batch_size=batch))

    info = {
        "fastembed": fastembed.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
    }
    serve(args.texts, embed, info)


def by_length(texts: list[str], embed: Callable[[list[str]], Any]) -> list[Any]:
    """``embed`` of ``texts`` sorted longest first (so batches hold similar lengths), as
    lists in the input order."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[Any] = [None] * len(texts)
    for i, vector in zip(order, embed([texts[i] for i in order])):
        out[i] = vector.tolist()
    return out


def _raw(args: argparse.Namespace) -> None:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()  # fastembed's
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = args.threads
    session = ort.InferenceSession(
        f"{args.model_dir}/onnx/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    tokenizer.enable_truncation(args.max_length)
    tokenizer.enable_padding()

    def run(texts: list[str]) -> Any:
        """One padded batch: unit mean-pooled vectors, as fastembed computes them."""
        encoded = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feed)[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def embed(texts: list[str], options: dict[str, Any]) -> Any:
        batch = int(options.get("batch_size", 32))

        def batches(ordered: list[str]) -> Any:
            return [
                v for at in range(0, len(ordered), batch) for v in run(ordered[at : at + batch])
            ]

        return by_length(texts, batches)

    info = {"onnxruntime": ort.__version__, "threads": args.threads}
    serve(args.texts, embed, info)


if __name__ == "__main__":
    main()
