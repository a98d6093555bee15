"""Small builders shared by the store tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode


def unit(rng: np.random.Generator, dimension: int) -> np.ndarray:
    vector = rng.normal(size=dimension)
    return vector / np.linalg.norm(vector)


def node(
    node_id: str,
    embedding: np.ndarray | list[float],
    text: str = "",
    metadata: dict[str, Any] | None = None,
    doc: str | None = None,
) -> TextNode:
    relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)} if doc else {}
    return TextNode(
        id_=node_id,
        text=text or f"text of {node_id}",
        embedding=[float(x) for x in embedding],
        metadata=metadata or {},
        relationships=relationships,
    )
