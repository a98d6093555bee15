"""Asking a running `crab serve` over HTTP, standard library only (no import cost)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from .discovery import Endpoint

__all__ = ["ServeReply", "ServeUnavailable", "post"]


class ServeUnavailable(Exception):
    """The server could not be reached or did not answer as a server of ours would."""


class ServeReply:
    """A server's answer: HTTP status and the JSON body."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The error message of a failed request."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict):
            return str(error.get("message", ""))
        return str(error or self.body)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(endpoint: Endpoint, timeout: float) -> http.client.HTTPConnection:
    if endpoint.socket:
        return _UnixConnection(endpoint.socket, timeout)
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint.url or "")
    if parts.scheme != "http" or not parts.hostname:
        raise ServeUnavailable(f"not an http:// server URL: {endpoint.url!r}")
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


def post(
    endpoint: Endpoint, path: str, body: dict[str, Any], *, timeout: float = 600.0
) -> ServeReply:
    """POST ``body`` as JSON to ``path``; :class:`ServeUnavailable` when the server cannot
    be reached or its answer is not JSON."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if endpoint.token:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    connection = _connection(endpoint, timeout)
    try:
        connection.request("POST", path, json.dumps(body).encode(), headers)
        response = connection.getresponse()
        raw = response.read()
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        raise ServeUnavailable(f"{endpoint.where}: {exc}") from exc
    finally:
        connection.close()
    try:
        return ServeReply(status, json.loads(raw))
    except ValueError as exc:
        raise ServeUnavailable(f"{endpoint.where} answered {status} without JSON") from exc
