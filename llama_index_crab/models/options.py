"""The pydantic fields the model classes share: GPU offload and which weights load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from .runtime import gpu_settings

__all__ = ["GpuOptions", "WeightsOption"]


class GpuOptions(BaseModel):
    """llama.cpp's GPU offload settings, shared by the model classes. A CPU-only build of
    llama-cpp-python accepts and ignores them."""

    n_gpu_layers: int = Field(
        default=0, ge=-1, description="Layers offloaded to the GPU: 0 none, -1 all."
    )
    main_gpu: int = Field(default=0, ge=0, description="The GPU for the whole model or scratch.")
    split_mode: Literal["none", "layer", "row"] = Field(
        default="layer", description="How several GPUs share the model."
    )
    tensor_split: list[float] | None = Field(
        default=None, description="Share of the model per GPU, e.g. [3, 1]."
    )

    def gpu_options(self) -> dict[str, Any]:
        """The settings as llama-cpp-python's ``Llama(...)`` takes them."""
        return gpu_settings(self.n_gpu_layers, self.main_gpu, self.split_mode, self.tensor_split)


class WeightsOption(BaseModel):
    """The weights a model class loads, shared by LlamaCppEmbedding and LlamaCppRerank."""

    weights: Literal["auto", "file", "f32", "bf16"] = Field(
        default="auto",
        description="'auto': the fastest on this CPU of the file, its float32 copy and (on "
        "CPUs with bf16 dot products) its bf16 copy, timed once and remembered; 'file', "
        "'f32', 'bf16' force one. Copies are made once in the cache.",
    )
    _source: Path | None = PrivateAttr(default=None)

    def identity_file(self) -> Path:
        """The file a collection identity names: the model's own file for "auto" and "file"
        (whichever weights "auto" loads compute its model), the copy for a forced choice."""
        if self._source is not None and self.weights in ("auto", "file"):
            return self._source
        return Path(str(getattr(self, "model_path", "")))
