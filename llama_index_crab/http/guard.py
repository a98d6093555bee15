"""The ASGI layer in front of every route: token, locality and request size.

Refusals are one-line JSON errors in OpenAI's shape (``{"error": {"message", "type",
"code"}}``), so OpenAI-compatible clients show the message.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

__all__ = ["Guard", "error_body", "is_loopback"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    503: "unavailable_error",
}


def error_body(status: int, message: str) -> bytes:
    """One line of JSON: the error's message (whitespace collapsed), type and status."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": " ".join(message.split()), "type": kind, "code": status}
    return json.dumps({"error": error}, ensure_ascii=False).encode() + b"\n"


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine's: a loopback IP, or None (a Unix socket)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


async def _reply(
    send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = error_body(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Refuse what must not reach the routes.

    With ``token``, every request needs ``Authorization: Bearer <token>``. Without one, only
    clients on this machine (loopback or Unix socket) are served. Bodies over ``max_body``
    bytes are refused before any route sees them (read whole, then replayed).
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.token is not None:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.token.encode()
            ):
                await _reply(
                    send,
                    401,
                    "missing or wrong token: send the header "
                    "'Authorization: Bearer <token>' with the token crab serve was started with",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        else:
            client = scope.get("client")
            if not is_loopback(client[0] if client else None):
                await _reply(
                    send,
                    403,
                    "this server answers only this machine; start crab serve with "
                    "--host and --token to serve others",
                )
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _reply(send, 400, "the Content-Length header is not a number")
                return
            if length > self.max_body:
                await _reply(send, 413, self._too_large(length))
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > self.max_body:
                await _reply(send, 413, self._too_large(len(body)))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return (
            f"the request body has {size} bytes, more than this server's limit of "
            f"{self.max_body}; send fewer or shorter texts per request, or start crab serve "
            "with a larger --max-request-bytes"
        )
