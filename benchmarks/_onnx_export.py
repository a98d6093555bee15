"""ONNX exports of the sentence-transformers all-MiniLM-L6-v2 folder, laid out for fastembed.

``python -m benchmarks._onnx_export --model-dir D --out O`` (in the anchor's virtualenv, see
``benchmarks/anchor.py``) writes ``O/{fp32,fused,int8}/`` each holding ``onnx/model.onnx`` and
the tokenizer files: fp32 as ``torch.onnx.export`` gives it, fused by ONNX Runtime's transformers
optimizer (attention, GELU, layer norm fused; float32 kept), int8 by dynamic quantization of
the fp32 graph (per-channel int8 weights, activations quantized per call), as Qdrant's int8
models are made. Skips what exists.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

VARIANTS = ("fp32", "fused", "int8")
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def export(model_dir: Path, out: Path) -> None:
    for variant in VARIANTS:
        folder = out / variant
        (folder / "onnx").mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (model_dir / name).exists():
                shutil.copy(model_dir / name, folder / name)
    fp32 = out / "fp32" / "onnx" / "model.onnx"
    if not fp32.exists():
        _export_fp32(model_dir, fp32)
    fused = out / "fused" / "onnx" / "model.onnx"
    if not fused.exists():
        from onnxruntime.transformers.optimizer import optimize_model

        config = _config(model_dir)
        opt = optimize_model(
            str(fp32),
            model_type="bert",
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
        )
        opt.save_model_to_file(str(fused))
    int8 = out / "int8" / "onnx" / "model.onnx"
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)


def _config(model_dir: Path) -> dict[str, object]:
    import json

    data: dict[str, object] = json.loads((model_dir / "config.json").read_text())
    return data


def _export_fp32(model_dir: Path, dst: Path) -> None:
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir)).eval()

    class Encoder(torch.nn.Module):  # keyword arguments: BertModel.forward's order moves
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.inference_mode():
        torch.onnx.export(
            Encoder(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(dst),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    export(args.model_dir, args.out)


if __name__ == "__main__":
    main()
