"""Worker: sentence-transformers CrossEncoder on the toy reranker's HF weights (runs in .venv-st).

``python -m benchmarks.ce_worker --texts F --query Q --model-dir D [--reference R]``: scores
(Q, text) for the texts of F with ``CrossEncoder.predict`` and answers with raw logits (one
``[logit]`` per text, unnormalised). Each run command may carry ``{"batch_size": n}`` (default
16). D is the directory that ``benchmarks.tools.gguf_to_hf.rebuild`` writes; with R (the reference
``rerank.json``) the worker first checks D against the PyTorch reference logits and puts the
result in its ready info. Speaks the protocol of ``benchmarks._serve``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks._serve import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--reference")
    args = parser.parse_args()

    import sentence_transformers
    import torch

    from benchmarks.tools.gguf_to_hf import check, load_cross_encoder

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_cross_encoder(args.model_dir, max_length=args.max_length)

    def score(texts: list[str], options: dict[str, Any]) -> Any:
        with torch.inference_mode():
            logits = model.predict(
                [(args.query, t) for t in texts],
                batch_size=int(options.get("batch_size", 16)),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [[float(x)] for x in logits.reshape(len(texts))]

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "threads": torch.get_num_threads(),
        "max_length": args.max_length,
    }
    if args.reference:
        info["reference"] = check(model, args.reference)
    serve(args.texts, score, info, unit=False, probe=None)


if __name__ == "__main__":
    main()
