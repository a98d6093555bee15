"""weights="auto": the fastest of the file and its copies, timed once per model, CPU and
llama.cpp build, remembered in the cache; forced choices; the copy size limit."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from _models import EMBEDDER_BF16, EMBEDDER_Q8, RERANKER_Q8

from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank
from llama_index_crab.models import cpu, weights
from llama_index_crab.models.gguf import file_identity
from llama_index_crab.models.weights import ALL_F32, MOSTLY_BF16, choose, file_type

TEXTS = ["The with statement wraps a block.", "Generators yield values lazily.", "SQL joins"]


class Timer:
    """Stands in for the decode timer only: fixed seconds per kind, calls counted."""

    def __init__(self, seconds: Mapping[str, float]) -> None:
        self.seconds = dict(seconds)
        self.calls: list[dict[str, Path]] = []

    def __call__(self, paths: Mapping[str, Path], **_: object) -> dict[str, float]:
        self.calls.append(dict(paths))
        return {k: self.seconds[k] for k in paths}


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The copies, made once for the module (tests share them, not their choices)."""
    root = tmp_path_factory.mktemp("copies")
    for kind in ("f32", "bf16"):
        for model in (EMBEDDER_Q8, EMBEDDER_BF16):
            weights.copy(model, kind, root / kind)
    return root


@pytest.fixture
def cache(tmp_path: Path, copies: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty choice store per test; the module's copies are linked in."""
    root = tmp_path / "cache"
    root.mkdir()
    for kind in ("f32", "bf16"):
        (root / kind).symlink_to(copies / kind)
    monkeypatch.setenv("CRAB_CACHE_DIR", str(root))
    monkeypatch.delenv("CRAB_WEIGHTS_COPY_LIMIT_MB", raising=False)
    return root


@pytest.fixture
def timer(monkeypatch: pytest.MonkeyPatch) -> Timer:
    t = Timer({"file": 1.0, "f32": 1.5, "bf16": 0.8})
    monkeypatch.setattr(cpu, "time_decodes", t)
    monkeypatch.setattr(cpu, "has_bf16_dot", lambda: True)
    return t


def test_the_fastest_is_loaded_and_remembered(cache: Path, timer: Timer) -> None:
    first = choose(EMBEDDER_Q8)
    assert (first.kind, first.measured_now) == ("bf16", True)
    assert set(timer.calls[0]) == {"file", "f32", "bf16"}
    assert file_type(first.path) == MOSTLY_BF16
    again = choose(EMBEDDER_Q8)
    assert (again.kind, again.path, again.measured_now) == ("bf16", first.path, False)
    assert len(timer.calls) == 1  # no second measurement
    assert again.seconds == first.seconds


def test_a_changed_model_is_measured_again(cache: Path, timer: Timer, tmp_path: Path) -> None:
    model = tmp_path / EMBEDDER_Q8.name
    shutil.copy(EMBEDDER_Q8, model)
    choose(model)
    shutil.copy(EMBEDDER_BF16, model)  # same path, other content
    assert choose(model).measured_now
    assert len(timer.calls) == 2


def test_a_moved_copy_is_the_same_model(cache: Path, timer: Timer, tmp_path: Path) -> None:
    choose(EMBEDDER_Q8)
    (tmp_path / "moved").mkdir()
    shutil.copy(EMBEDDER_Q8, tmp_path / "moved" / EMBEDDER_Q8.name)
    assert not choose(tmp_path / "moved" / EMBEDDER_Q8.name).measured_now


@pytest.mark.parametrize("changed", ["cpu_model", "llama_build"])
def test_another_cpu_or_build_is_measured_again(
    changed: str, cache: Path, timer: Timer, monkeypatch: pytest.MonkeyPatch
) -> None:
    choose(EMBEDDER_BF16)
    monkeypatch.setattr(cpu, changed, lambda: "something else")
    assert choose(EMBEDDER_BF16).measured_now
    assert len(timer.calls) == 2


def test_remeasure_on_request(cache: Path, timer: Timer) -> None:
    choose(EMBEDDER_BF16)
    assert choose(EMBEDDER_BF16, remeasure=True).measured_now


def test_the_file_wins_unless_a_copy_is_clearly_faster(cache: Path, timer: Timer) -> None:
    timer.seconds = {"file": 1.0, "f32": 0.99, "bf16": 1.2}
    assert choose(EMBEDDER_Q8).kind == "file"


def test_copies_over_the_size_limit_are_not_made(
    tmp_path: Path, timer: Timer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CRAB_WEIGHTS_COPY_LIMIT_MB", "60")  # bf16 file 44 MB, f32 copy 87 MB
    got = choose(EMBEDDER_BF16)
    assert (got.kind, got.path) == ("file", EMBEDDER_BF16)
    assert "CRAB_WEIGHTS_COPY_LIMIT_MB" in got.skipped["f32"]
    assert not list(tmp_path.glob("f32/*/*.gguf"))
    assert timer.calls == []  # one candidate: nothing to time


def test_a_forced_copy_is_made_whatever_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CRAB_WEIGHTS_COPY_LIMIT_MB", "1")
    model = LlamaCppEmbedding(EMBEDDER_BF16, weights="f32")
    assert file_type(Path(model.model_path)) == ALL_F32


@pytest.mark.parametrize("forced", ["file", "f32", "bf16"])
def test_forced_choices_measure_nothing(forced: str, cache: Path, timer: Timer) -> None:
    model = LlamaCppEmbedding(EMBEDDER_Q8, weights=forced)
    want = {"file": 7, "f32": ALL_F32, "bf16": MOSTLY_BF16}[forced]
    assert file_type(Path(model.model_path)) == want
    assert timer.calls == []


def test_auto_keeps_the_files_identity(cache: Path, timer: Timer) -> None:
    # Any choice computes the file's model: a collection made on one machine works on another.
    auto = LlamaCppEmbedding(EMBEDDER_Q8)
    assert auto.model_path != str(EMBEDDER_Q8)
    assert auto.identity().model == file_identity(EMBEDDER_Q8)
    forced = LlamaCppEmbedding(EMBEDDER_Q8, weights="bf16")
    assert forced.identity().model == file_identity(Path(forced.model_path))


def test_bf16_needs_bf16_dot_products(
    cache: Path, timer: Timer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "has_bf16_dot", lambda: False)
    got = choose(EMBEDDER_Q8)
    assert set(timer.calls[0]) == {"file", "f32"}
    assert "bf16" in got.skipped


def test_the_reranker_loads_the_choice_too(cache: Path, timer: Timer) -> None:
    model = LlamaCppRerank(RERANKER_Q8)
    assert file_type(Path(model.model_path)) == MOSTLY_BF16
    assert Path(model.model_path) == choose(RERANKER_Q8).path


def test_a_real_measurement_picks_and_embeds(cache: Path) -> None:
    # Timed for real (about a second on a quiet machine): the winner embeds as the file does.
    got = choose(EMBEDDER_BF16)
    assert set(got.seconds) == {"file", "f32"}
    assert got.seconds[got.kind] <= min(got.seconds.values()) * (1 + weights.MARGIN)
    with (
        LlamaCppEmbedding(EMBEDDER_BF16) as auto,
        LlamaCppEmbedding(EMBEDDER_BF16, weights="file") as file,
    ):
        assert auto.model_path == str(got.path)
        cos = np.sum(auto.embed(TEXTS) * file.embed(TEXTS), axis=1)
    assert np.min(cos) >= 0.9999
