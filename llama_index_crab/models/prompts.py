"""The query and document prompts each embedding family was trained with, chosen from the
GGUF's metadata (``general.name``, ``general.basename``, architecture, pooling).

Asymmetric retrieval models lose much of their quality when queries arrive without the
instruction they were trained with; symmetric ones (all-MiniLM, gte, bge-m3) have none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Prompts", "prompts_for"]

_RETRIEVE = "Given a web search query, retrieve relevant passages that answer the query"
_REPRESENT = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class Prompts:
    """What goes before queries and before documents, and which family chose them."""

    family: str
    query: str = ""
    text: str = ""


# (family, pattern, query prompt, document prompt); the first match wins. Patterns are
# searched in lowercased names with spaces and '_' as '-'.
_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("nomic-embed", r"nomic-embed|nomic-bert", "search_query: ", "search_document: "),
    ("qwen3-embedding", r"qwen3-embedding", f"Instruct: {_RETRIEVE}\nQuery:", ""),
    ("gte-qwen", r"gte-qwen", f"Instruct: {_RETRIEVE}\nQuery: ", ""),
    ("e5-mistral", r"e5-mistral", f"Instruct: {_RETRIEVE}\nQuery: ", ""),
    ("e5-instruct", r"e5-.*instruct", f"Instruct: {_RETRIEVE}\nQuery: ", ""),
    ("e5", r"(^|-)(multilingual-)?e5(-|$)", "query: ", "passage: "),
    (
        "embeddinggemma",
        r"embeddinggemma|embedding-gemma|gemma-embedding",
        "task: search result | query: ",
        "title: none | text: ",
    ),
    ("bge-zh", r"bge-.*zh", "为这个句子生成表示以用于检索相关文章：", ""),
    ("bge-m3", r"bge-m3", "", ""),
    ("bge-en", r"bge-(small|base|large)", _REPRESENT, ""),
    ("mxbai-embed", r"mxbai-embed", _REPRESENT, ""),
    ("arctic-embed-v2", r"arctic-embed-.*v2", "query: ", ""),
    ("arctic-embed", r"arctic-embed", _REPRESENT, ""),
)


def prompts_for(*names: str) -> Prompts:
    """The prompts of the first family that one of ``names`` (the GGUF's ``general.name``,
    ``general.basename``, architecture, file name; in that order of trust) belongs to, or
    none (family ``"none"``) for a model not known to need any."""
    for word in (re.sub(r"[\s_]+", "-", name.strip().lower()) for name in names):
        for family, pattern, query, text in _FAMILIES:
            if re.search(pattern, word):
                return Prompts(family, query, text)
    return Prompts("none")
