"""Driver side: alternatives running in their own processes, answering JSON lines.

A process of its own isolates crashes (llama-cpp-python aborts on some inputs with
GGML_ASSERT) and lets sentence-transformers run from a separate virtualenv.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "Worker", "WorkerError", "write_texts"]

ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """A worker process died or answered something unexpected."""


def write_texts(texts: list[str], directory: str) -> str:
    path = os.path.join(directory, "texts.json")
    with open(path, "w") as fh:
        json.dump({"texts": texts}, fh)
    return path


class Worker:
    """One worker process; :meth:`start` launches it, :meth:`wait_ready` waits for the model."""

    def __init__(self, python: str, module: str, args: list[str]) -> None:
        self.command = [python, "-m", module, *args]
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def start(self) -> Worker:
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        self._proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        return self

    def wait_ready(self) -> dict[str, Any]:
        self.info = self._receive().get("info", {})
        return self.info

    def run(self, start: int, stop: int, probe_all: bool = False, **options: Any) -> dict[str, Any]:
        """One timed pass over texts[start:stop]: ``{"seconds", "cpu", "probe"}`` (the probe:
        every vector when ``probe_all``)."""
        message = {"cmd": "run", "start": start, "stop": stop, "options": options}
        self._send({**message, "probe_all": probe_all})
        return self._receive()

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._send({"cmd": "quit"})
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, WorkerError):
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
        self._proc = self._stderr = None

    def _send(self, message: dict[str, Any]) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise WorkerError("worker not started")
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError as exc:
            raise WorkerError(self._death()) from exc

    def _receive(self) -> dict[str, Any]:
        if self._proc is None or self._proc.stdout is None:
            raise WorkerError("worker not started")
        line = self._proc.stdout.readline()
        if not line:
            raise WorkerError(self._death())
        message: dict[str, Any] = json.loads(line)
        return message

    def _death(self) -> str:
        code = self._proc.wait() if self._proc is not None else None
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().splitlines() if ln.strip()]
            tail = lines[-1][:200] if lines else ""
        return f"exit code {code}" + (f": {tail}" if tail else "")
