"""Worker: sentence-transformers on the original all-MiniLM-L6-v2 weights (runs in .venv-st).

``python -m benchmarks.st_worker --texts F --model-dir D``; each run command may carry
``{"batch_size": n}``. Speaks the protocol of ``benchmarks._serve``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks._serve import serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(args.model_dir, device="cpu")
    # The model's own config says 256; the reference vectors (and our GGUF) use 512.
    model.max_seq_length = args.max_seq_length

    def embed(texts: list[str], options: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return model.encode(
                texts,
                batch_size=int(options.get("batch_size", 32)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).tolist()

    info = {
        "torch": torch.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "threads": torch.get_num_threads(),
        "max_seq_length": model.max_seq_length,
    }
    serve(args.texts, embed, info)


if __name__ == "__main__":
    main()
