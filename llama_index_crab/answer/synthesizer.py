"""ExtractiveSynthesizer: LlamaIndex response synthesis without an LLM, quoting the sources.

``pipe.as_query_engine()`` uses it unless a chat model is given, so a LlamaIndex query engine
answers as ``crab ask`` does: the retrieved passages' sentences that answer best, each cited
``[n]`` — it cannot drift from its sources, and no LLM (local or cloud) is called.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.llms.mock import MockLLM
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers.base import BaseSynthesizer, QueryTextType
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from .extractive import extract_answer, format_answer

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding
    from ..models.rerank import LlamaCppRerank

__all__ = ["ExtractiveSynthesizer"]


class ExtractiveSynthesizer(BaseSynthesizer):
    """Answer with up to ``max_sentences`` sentences quoted from the nodes, each cited
    ``[n]`` (n: the node's place in ``source_nodes``, from 1), scored against the question
    by ``reranker`` if given, else by ``embed_model`` (cosine). ``response.metadata["quotes"]``
    holds the quotes with their sources and scores."""

    def __init__(
        self,
        embed_model: LlamaCppEmbedding,
        reranker: LlamaCppRerank | None = None,
        *,
        max_sentences: int = 2,
        **kwargs: Any,
    ) -> None:
        # No LLM is called; LlamaIndex's base class wants one for its prompt helpers, and
        # without one it would resolve Settings.llm (OpenAI by default).
        super().__init__(llm=MockLLM(), **kwargs)
        self._embed_model = embed_model
        self._reranker = reranker
        self._max_sentences = max_sentences

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """No prompts: nothing is generated."""

    def synthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        question = query.query_str if isinstance(query, QueryBundle) else str(query)
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: question}
        ) as event:
            quotes = extract_answer(
                question,
                nodes,
                self._embed_model,
                self._reranker,
                max_sentences=self._max_sentences,
            )
            response = Response(
                format_answer(quotes),
                source_nodes=[*nodes, *(additional_source_nodes or [])],
                metadata={"quotes": [vars(q) for q in quotes]},
            )
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def asynthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        return await asyncio.to_thread(self.synthesize, query, nodes, additional_source_nodes)

    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> str:
        """The cited answer from plain text chunks (chunk n is source ``[n]``)."""
        nodes = [NodeWithScore(node=TextNode(text=t)) for t in text_chunks]
        return str(self.synthesize(query_str, nodes))

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> str:
        return await asyncio.to_thread(self.get_response, query_str, text_chunks)
