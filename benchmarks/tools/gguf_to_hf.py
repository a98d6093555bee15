"""Rebuild the toy reranker's Hugging Face checkpoint from its f16 GGUF.

The original ``BertForSequenceClassification`` checkpoint is not installable, but the f16 GGUF
holds every weight (f16-rounded): the BERT encoder under llama.cpp's names, the HF pooler as
``cls.weight``/``cls.bias`` and the HF classifier as ``cls.output.weight``/``cls.output.bias``
(see ``../shared/models/README.md``). :func:`rebuild` reverses llama.cpp's BERT tensor names and
its WordPiece vocabulary encoding and writes ``config.json``, a float32 ``model.safetensors``
and the tokenizer files, so that transformers and sentence-transformers load the directory as
they would the original. It needs only numpy and ``gguf`` (the project venv); the safetensors
file is written by hand, the format being a JSON header and raw little-endian arrays.

``.venv/bin/python -m benchmarks.tools.gguf_to_hf`` rebuilds the directory and then checks it from
``benchmarks/.venv-st`` against ``../shared/models/reference/rerank.json`` (:func:`check`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CACHE", "F16_GGUF", "REFERENCE", "check", "rebuild"]

_HERE = Path(__file__).resolve().parent
F16_GGUF = _HERE.parent.parent / "shared" / "models" / "minilm-toy-reranker-f16.gguf"
REFERENCE = F16_GGUF.parent / "reference" / "rerank.json"
CACHE = _HERE / ".cache" / "minilm-toy-reranker-hf"
_FORMAT = 1  # bump when the output changes, so cached directories are rebuilt

_GLOBAL = {
    "token_embd": "bert.embeddings.word_embeddings",
    "position_embd": "bert.embeddings.position_embeddings",
    "token_types": "bert.embeddings.token_type_embeddings",
    "token_embd_norm": "bert.embeddings.LayerNorm",
    "cls": "bert.pooler.dense",
    "cls.output": "classifier",
}
_BLOCK = {
    "attn_q": "attention.self.query",
    "attn_k": "attention.self.key",
    "attn_v": "attention.self.value",
    "attn_output": "attention.output.dense",
    "attn_output_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
    "layer_output_norm": "output.LayerNorm",
}
_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def hf_name(gguf_name: str) -> str:
    """The HF parameter name of a llama.cpp BERT tensor name (``blk.3.attn_q.weight`` ...)."""
    stem, _, kind = gguf_name.rpartition(".")
    if kind not in ("weight", "bias"):
        raise KeyError(gguf_name)
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    blk, layer, part = [*stem.split(".", 2), "", ""][:3]
    if blk != "blk" or not layer.isdigit() or part not in _BLOCK:
        raise KeyError(f"no Hugging Face name for GGUF tensor {gguf_name!r}")
    return f"bert.encoder.layer.{int(layer)}.{_BLOCK[part]}.{kind}"


def _wordpiece(token: str) -> str:
    """Undo convert_hf_to_gguf's BERT vocabulary encoding.

    The converter keeps ``[...]`` tokens, strips ``##`` from continuation pieces and prefixes
    word-initial pieces with U+2581; this restores the WordPiece spelling of vocab.txt.
    """
    if token.startswith("\u2581"):
        return token[1:]
    if token.startswith("[") and token.endswith("]"):
        return token
    return "##" + token


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, ff = cfg["hidden_size"], cfg["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
        "bert.embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
        "bert.embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], h),
        "bert.embeddings.LayerNorm.weight": (h,),
        "bert.embeddings.LayerNorm.bias": (h,),
        "bert.pooler.dense.weight": (h, h),
        "bert.pooler.dense.bias": (h,),
        "classifier.weight": (cfg["num_labels"], h),
        "classifier.bias": (cfg["num_labels"],),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            shapes[f"{p}{name}.weight"], shapes[f"{p}{name}.bias"] = (h, h), (h,)
        shapes[f"{p}attention.output.dense.weight"] = (h, h)
        shapes[f"{p}attention.output.dense.bias"] = (h,)
        shapes[f"{p}intermediate.dense.weight"] = (ff, h)
        shapes[f"{p}intermediate.dense.bias"] = (ff,)
        shapes[f"{p}output.dense.weight"] = (h, ff)
        shapes[f"{p}output.dense.bias"] = (h,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{norm}.weight"], shapes[f"{p}{norm}.bias"] = (h,), (h,)
    return shapes


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _config(reader: Any, n_vocab: int, n_types: int) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch != "bert":
        raise ValueError(f"expected a BERT GGUF, got architecture {arch!r}")
    labels = list(_field(reader, "bert.classifier.output_labels") or ["LABEL_0"])
    eps = float(_field(reader, "bert.attention.layer_norm_epsilon"))
    return {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": n_vocab,
        "hidden_size": int(_field(reader, "bert.embedding_length")),
        "num_hidden_layers": int(_field(reader, "bert.block_count")),
        "num_attention_heads": int(_field(reader, "bert.attention.head_count")),
        "intermediate_size": int(_field(reader, "bert.feed_forward_length")),
        "hidden_act": "gelu",  # llama.cpp's BERT graph: erf GELU, as HF "gelu"
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": int(_field(reader, "bert.context_length")),
        "type_vocab_size": n_types,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{eps:.6g}"),  # stored as float32 1e-12
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id") or 0),
        "position_embedding_type": "absolute",
        "num_labels": len(labels),
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "torch_dtype": "float32",
    }


def _write_safetensors(path: Path, tensors: dict[str, Any]) -> None:
    """safetensors: u64 header length, JSON header (F32, shape, byte range), raw data."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    arrays = {}
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        arrays[name] = arr
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name in sorted(arrays):
            fh.write(arrays[name].tobytes())


def _stamp(gguf_path: Path) -> dict[str, Any]:
    st = gguf_path.stat()
    return {"source": str(gguf_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "v": _FORMAT}


def rebuild(gguf_path: Path = F16_GGUF, out_dir: Path = CACHE) -> Path:
    """Write the HF ``BertForSequenceClassification`` directory of ``gguf_path`` (cached)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    stamp_file = out_dir / "gguf_source.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == _stamp(gguf_path):
        return out_dir

    reader = GGUFReader(gguf_path)
    tensors: dict[str, Any] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        data = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # ggml lists dimensions fastest-first; gguf's numpy view is already row-major (torch).
        dims = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[name] = data.reshape(dims)

    tokens = [str(tok) for tok in _field(reader, "tokenizer.ggml.tokens")]
    vocab = [_wordpiece(tok) for tok in tokens]
    if len(set(vocab)) != len(vocab):
        raise ValueError("the GGUF vocabulary does not map back to distinct WordPiece tokens")
    for key, special in _SPECIALS.items():
        if special not in vocab:
            raise ValueError(f"{special} ({key}) missing from the GGUF vocabulary")
    types = tensors["bert.embeddings.token_type_embeddings.weight"].shape[0]
    cfg = _config(reader, len(vocab), types)

    expected = _expected_shapes(cfg)
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"tensor set mismatch: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise ValueError(f"{name}: shape {tensors[name].shape}, expected {shape}")

    lower = _field(reader, "tokenizer.ggml.normalizer.lowercase")
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True if lower is None else bool(lower),
        "do_basic_tokenize": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": cfg["max_position_embeddings"],
        **{f"{key}_token": tok for key, tok in _SPECIALS.items()},
    }
    special_tokens_map = {f"{key}_token": tok for key, tok in _SPECIALS.items()}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        _write_safetensors(tmp / "model.safetensors", tensors)
        (tmp / "vocab.txt").write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special_tokens_map) + "\n")
        (tmp / "gguf_source.json").write_text(json.dumps(_stamp(gguf_path)) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_cross_encoder(model_dir: Path | str, max_length: int = 512) -> Any:
    """The rebuilt directory as a sentence-transformers CrossEncoder that returns raw logits."""
    import torch
    from sentence_transformers import CrossEncoder

    return CrossEncoder(
        str(model_dir),
        num_labels=1,
        max_length=max_length,
        activation_fn=torch.nn.Identity(),
        device="cpu",
        model_kwargs={"attn_implementation": "eager"},
    )


def check(model: Any, reference: Path = REFERENCE) -> dict[str, Any]:
    """Compare a :func:`load_cross_encoder` model with the PyTorch reference logits.

    Runs inside ``.venv-st``. ``ids``: pairs whose CrossEncoder tokenization equals the
    reference ``input_ids``; ``max_abs_delta_ids``: the HF model on the reference ids and
    token types, one pair per forward pass, vs ``logit_hf_pair`` (the weights alone);
    ``max_abs_delta_predict``: ``CrossEncoder.predict`` on the texts (tokenizer, truncation
    and padding included), vs ``logit_hf_pair``.
    """
    import torch

    ref = json.loads(Path(reference).read_text())
    pairs = [(q["query"], d) for q in ref["queries"] for d in q["documents"]]
    hf = model.model
    tokenizer = model.tokenizer
    same_ids, deltas_ids, mismatched = 0, [], []
    with torch.inference_mode():
        for query, doc in pairs:
            ids = doc["input_ids"]
            n_b = doc["n_type1_tokens"]
            types = [0] * (len(ids) - n_b) + [1] * n_b
            out = hf(
                input_ids=torch.tensor([ids]),
                token_type_ids=torch.tensor([types]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )
            deltas_ids.append(abs(float(out.logits[0, 0]) - doc["logit_hf_pair"]))
            enc = tokenizer(query, doc["document"], truncation="only_second", max_length=512)
            if enc["input_ids"] == ids:
                same_ids += 1
            else:
                mismatched.append(f"{query[:30]!r} / {doc['document'][:30]!r}")
        logits = model.predict(
            [(q, d["document"]) for q, d in pairs], batch_size=16, show_progress_bar=False
        )
    deltas_pred = [abs(float(x) - d["logit_hf_pair"]) for x, (_, d) in zip(logits, pairs)]
    return {
        "pairs": len(pairs),
        "ids": same_ids,
        "mismatched_ids": mismatched,
        "max_abs_delta_ids": max(deltas_ids),
        "mean_abs_delta_ids": sum(deltas_ids) / len(deltas_ids),
        "max_abs_delta_predict": max(deltas_pred),
        "max_abs_delta_predict_pair": pairs[deltas_pred.index(max(deltas_pred))][1]["document"][
            :40
        ],
    }


def main() -> None:
    if "--check" in sys.argv:
        model_dir = sys.argv[sys.argv.index("--check") + 1]
        print(json.dumps(check(load_cross_encoder(model_dir)), indent=2))
        return
    from benchmarks._st_env import VENV

    out = rebuild()
    print(f"rebuilt {out}", file=sys.stderr)
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"{VENV} missing: not checking against the reference", file=sys.stderr)
        return
    env = {**os.environ, "PYTHONPATH": str(_HERE.parent), "HF_HUB_OFFLINE": "1"}
    cmd = [str(python), "-m", "benchmarks.tools.gguf_to_hf", "--check", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=_HERE.parent)


if __name__ == "__main__":
    main()
