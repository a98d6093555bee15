"""GPU offload options: accepted everywhere, ignored by this CPU build (same outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _models import EMBEDDER_Q8, RERANKER_Q8
from click.testing import CliRunner

from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank
from llama_index_crab.cli import main
from llama_index_crab.models.runtime import model_params

TEXTS = ["A man is eating food.", "GPU offload must not change a CPU build's vectors."]
GPU = {"n_gpu_layers": -1, "main_gpu": 0, "split_mode": "layer", "tensor_split": [1.0]}


def test_embedding_with_all_layers_offloaded_gives_the_same_vectors() -> None:
    with LlamaCppEmbedding(EMBEDDER_Q8) as cpu, LlamaCppEmbedding(EMBEDDER_Q8, **GPU) as gpu:
        assert gpu.n_gpu_layers == -1
        assert np.allclose(gpu.embed(TEXTS), cpu.embed(TEXTS), atol=1e-6)
        assert gpu.identity() == cpu.identity()


def test_rerank_with_all_layers_offloaded_gives_the_same_scores() -> None:
    documents = ["pgvector adds vector search to Postgres", "a cat on a mat"]
    cpu = LlamaCppRerank(RERANKER_Q8)
    gpu = LlamaCppRerank(RERANKER_Q8, n_gpu_layers=-1, split_mode="none")
    assert np.allclose(
        gpu.score("what is pgvector?", documents),
        cpu.score("what is pgvector?", documents),
        atol=1e-6,
    )
    cpu.close()
    gpu.close()


def test_chat_model_accepts_gpu_options() -> None:
    from llama_index_crab.models.chat import LlamaCppChat

    cpu = LlamaCppChat(max_tokens=6)
    gpu = LlamaCppChat(max_tokens=6, n_gpu_layers=-1, main_gpu=0, split_mode="row")
    assert gpu.gpu_options()["n_gpu_layers"] == -1
    assert gpu.complete("Name a colour.").text == cpu.complete("Name a colour.").text
    cpu.close()
    gpu.close()


def test_model_params_carry_the_settings() -> None:
    params, keep = model_params(n_gpu_layers=-1, main_gpu=1, split_mode=2, tensor_split=[3, 1])
    assert params.n_gpu_layers > 1000  # "all layers", as llama-cpp-python passes -1
    assert (params.main_gpu, params.split_mode) == (1, 2)
    assert list(keep[:2]) == [3.0, 1.0]
    assert model_params(n_gpu_layers=7)[0].n_gpu_layers == 7


def test_bad_gpu_options_are_refused() -> None:
    with pytest.raises(ValueError, match="split_mode"):
        LlamaCppEmbedding(EMBEDDER_Q8, split_mode="diagonal")
    with pytest.raises(ValueError, match="n_gpu_layers"):
        LlamaCppEmbedding(EMBEDDER_Q8, n_gpu_layers=-2)
    with pytest.raises(ValueError, match="tensor_split"):
        model_params(tensor_split=[1.0] * 10_000)


def test_gpu_options_with_a_llama_passed_in_are_refused() -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(EMBEDDER_Q8), embedding=True, n_ctx=512, verbose=False)
    model = LlamaCppEmbedding(llm, n_gpu_layers=-1)
    with pytest.raises(ValueError, match="n_gpu_layers"):
        model.embed(TEXTS)
    llm.close()


def test_cli_takes_n_gpu_layers_from_option_and_environment() -> None:
    runner = CliRunner()
    plain = runner.invoke(main, ["embed", "--embed-model", str(EMBEDDER_Q8), TEXTS[0]])
    flag = runner.invoke(
        main, ["embed", "--embed-model", str(EMBEDDER_Q8), "--n-gpu-layers", "-1", TEXTS[0]]
    )
    env = runner.invoke(
        main,
        ["embed", "--embed-model", str(EMBEDDER_Q8), TEXTS[0]],
        env={"CRAB_N_GPU_LAYERS": "99"},
    )
    assert plain.exit_code == flag.exit_code == env.exit_code == 0, plain.output + flag.output
    assert np.allclose(json.loads(flag.output), json.loads(plain.output), atol=1e-6)
    assert np.allclose(json.loads(env.output), json.loads(plain.output), atol=1e-6)
    bad = runner.invoke(main, ["embed", "--n-gpu-layers", "-2", TEXTS[0]])
    assert bad.exit_code == 2 and "n-gpu-layers" in bad.output


def test_build_pipeline_passes_n_gpu_layers_to_the_models(
    database_url: str, collection_name: str
) -> None:
    from llama_index_crab import build_pipeline

    pipe = build_pipeline(
        str(EMBEDDER_Q8),
        str(RERANKER_Q8),
        database_url=database_url,
        collection=collection_name,
        n_gpu_layers=-1,
    )
    assert pipe.embed_model.n_gpu_layers == -1
    assert pipe.reranker is not None and pipe.reranker.n_gpu_layers == -1
    pipe.close()
