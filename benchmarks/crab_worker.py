"""Worker: ``LlamaCppEmbedding`` on one weights file, in a process of its own.

``python -m benchmarks.crab_worker --texts F --model M [--weights file|f32|bf16|auto]``;
speaks the protocol of ``benchmarks._serve``. Threads: the package's defaults (all cores).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from benchmarks._serve import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()

    from llama_index_crab import LlamaCppEmbedding

    kwargs: dict[str, Any] = {} if args.weights is None else {"weights": args.weights}
    model = LlamaCppEmbedding(args.model, **kwargs)

    def embed(texts: list[str], options: dict[str, Any]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # over-long passages are cut, as the others do
            return model.embed(texts).tolist()

    runner = model.runner
    info = {"model_path": model.model_path, "threads": runner._threads}
    serve(args.texts, embed, info)


if __name__ == "__main__":
    main()
