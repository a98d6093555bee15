"""Worker: llama-cpp-python's own ``Llama.embed``, one text per call (loop) or all at once (list).

Run by the embedding benchmark as ``python -m benchmarks.llama_worker --texts F --model M
--mode loop|list``; speaks the protocol of ``benchmarks._serve``.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks._serve import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("loop", "list"), required=True)
    args = parser.parse_args()

    from llama_cpp import Llama

    if args.mode == "loop":
        # The seed's semantics: one context sized for one full-length text, one text per call.
        llm = Llama(args.model, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
    else:
        llm = Llama(args.model, embedding=True, verbose=False)  # llama-cpp-python's defaults

    def embed(texts: list[str], options: dict[str, Any]) -> list[list[float]]:
        if args.mode == "loop":
            return [llm.embed(t) for t in texts]
        return llm.embed(texts)  # type: ignore[no-any-return]

    cp = llm.context_params
    info = {
        "n_ctx": cp.n_ctx,
        "n_batch": cp.n_batch,
        "n_ubatch": cp.n_ubatch,
        "n_threads_batch": cp.n_threads_batch,
        "flash_attn": cp.flash_attn_type == 1,
    }
    serve(args.texts, embed, info)


if __name__ == "__main__":
    main()
