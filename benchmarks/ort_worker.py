"""Worker: ONNX Runtime as fastembed runs it, on a local ONNX export (runs in the anchor venv).

``python -m benchmarks.ort_worker --texts F --model-dir D --threads N``: fastembed's own
``TextEmbedding``, the folder registered as a custom model (mean pooling, L2-normalised, as
all-MiniLM-L6-v2) and loaded from ``D`` without the network; its session options are
fastembed's (``ORT_ENABLE_ALL``, ``threads`` intra- and inter-op). Each run command may carry
``{"batch_size": n}``. ``--sorted``: texts batched by length (longest first, order restored
after), the batching sentence-transformers and crab do; fastembed itself batches in input
order and pads each batch to its longest text. Speaks the protocol of ``benchmarks._serve``.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks._serve import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--sorted", action="store_true", help="batch texts by length")
    args = parser.parse_args()

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
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = list(model.embed([texts[i] for i in order], batch_size=batch))
        out: list[Any] = [None] * len(texts)
        for i, v in zip(order, vectors):
            out[i] = v.tolist()
        return out

    info = {
        "fastembed": fastembed.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
    }
    serve(args.texts, embed, info)


if __name__ == "__main__":
    main()
