"""Worker side of the JSON-line protocol (stdlib only: it also runs inside .venv-st).

A worker loads its model, embeds a few texts untimed, prints ``{"ready": true, "info": ...}``,
then answers each ``{"cmd": "run", "start": i, "stop": j, "options": {...}}`` line on stdin by
embedding ``texts[i:j]`` and printing ``{"seconds": s, "cpu": c, "probe": [[...], ...]}`` (wall
and process CPU seconds; the first vectors, L2-normalised, for a parity check, or all of them
when the command says ``"probe_all": true``; a scorer passes ``unit=False, probe=None`` to get
every output as it is, e.g. one raw logit per text).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PROBE", "serve"]

PROBE = 8
Embed = Callable[[list[str], dict[str, Any]], Sequence[Sequence[float]]]


def _unit(v: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(float(x) * float(x) for x in v)) or 1.0
    return [float(x) / norm for x in v]


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(
    texts_path: str,
    embed: Embed,
    info: dict[str, Any],
    *,
    unit: bool = True,
    probe: int | None = PROBE,
) -> None:
    """Answer run commands on stdin until it closes or says quit.

    The probe holds the first ``probe`` outputs (all when None), L2-normalised if ``unit``.
    """
    with open(texts_path) as fh:
        texts: list[str] = json.load(fh)["texts"]
    embed(texts[:PROBE], {})
    _send({"ready": True, "info": info})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        part = texts[request.get("start", 0) : request.get("stop", len(texts))]
        start, cpu = time.perf_counter(), time.process_time()
        vectors = embed(part, request.get("options", {}))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if len(vectors) != len(part):
            raise RuntimeError(f"got {len(vectors)} vectors for {len(part)} texts")
        head = vectors if probe is None or request.get("probe_all") else vectors[:probe]
        out = [_unit(v) if unit else [float(x) for x in v] for v in head]
        _send({"seconds": seconds, "cpu": cpu, "probe": out})
