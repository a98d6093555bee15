"""Run `crab serve`: load the models once, bind, announce the server, answer until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from .discovery import Endpoint, announce, server_key, withdraw
from .guard import is_loopback

__all__ = ["DEFAULT_PORT", "bind", "serve"]

DEFAULT_PORT = 8765


def bind(host: str, port: int, unix_socket: str | None, token: str | None) -> socket.socket:
    """The listening socket: a Unix socket only its owner may use, or TCP on ``host``.

    A host other than this machine's loopback needs a token: without one, anyone who
    reaches the address could use the models and read the collections.
    """
    if unix_socket:
        path = Path(unix_socket)
        if path.exists():
            if not stat.S_ISSOCK(path.stat().st_mode):
                raise ValueError(f"{path} exists and is not a socket; choose another --socket")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
                raise ValueError(f"another server listens on {path}; stop it or choose another")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # 0600 from the start: only this user may connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
    else:
        if not _is_local_host(host) and not token:
            raise ValueError(
                f"--host {host} accepts connections from other machines: give a --token "
                "(or CRAB_SERVE_TOKEN) that clients must send as 'Authorization: Bearer TOKEN'"
            )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ValueError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from None
    sock.listen(256)
    sock.setblocking(False)
    return sock


def _is_local_host(host: str) -> bool:
    return host == "localhost" or is_loopback(host)


def endpoint_of(sock: socket.socket, token: str | None) -> Endpoint:
    if sock.family == socket.AF_UNIX:
        return Endpoint(url=None, socket=str(sock.getsockname()), token=token, pid=os.getpid())
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return Endpoint(url=f"http://{shown}:{port}", socket=None, token=token, pid=os.getpid())


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    unix_socket: str | None = None,
    token: str | None = None,
    max_body: int = 4 << 20,
    database_url: str | None = None,
    collection: str = "default",
    embed_model: str | None = None,
    rerank_model: str | None = None,
    rerank_weights: str = "file",
    n_gpu_layers: int = 0,
    read_urls: Sequence[str] = (),
    chat_model: str | None = None,
    ready: Callable[[Endpoint], None] | None = None,
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM). ``ready`` is called with the endpoint
    once the models are loaded and the socket listens."""
    sock = bind(host, port, unix_socket, token)
    try:
        from ..pipeline import build_pipeline
        from .service import Service

        pipe = build_pipeline(
            embed_model,
            rerank_model,
            database_url=database_url,
            collection=collection,
            create_collection=False,
            read_urls=read_urls,
            n_gpu_layers=n_gpu_layers,
            rerank_weights=rerank_weights,
        )
        if chat_model:
            from ..models.chat import LlamaCppChat

            pipe.llm = LlamaCppChat(chat_model, max_tokens=160, n_gpu_layers=n_gpu_layers)
        service = Service(pipe, read_urls=read_urls, chat_model=chat_model)
        service.warm_up()
        key = server_key(
            database_url=database_url,
            embed_model=embed_model,
            rerank_model=rerank_model,
            rerank_weights=rerank_weights,
            n_gpu_layers=n_gpu_layers,
            read_urls=read_urls,
        )
        endpoint = endpoint_of(sock, token)
        asyncio.run(_run(service, sock, token, max_body, key, endpoint, ready))
    finally:
        sock.close()
        if unix_socket:
            with contextlib.suppress(OSError):
                Path(unix_socket).unlink()


class _Server(uvicorn.Server):
    """uvicorn's server with the signals left to us: uvicorn's own handling raises the
    signal again once it has stopped, which would end the process before the server file
    is removed."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        self.should_exit = True


async def _run(
    service: Any,
    sock: socket.socket,
    token: str | None,
    max_body: int,
    key: str,
    endpoint: Endpoint,
    ready: Callable[[Endpoint], None] | None,
) -> None:
    from .app import create_app

    app = create_app(service, token=token, max_body=max_body)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    try:
        if server.started:
            announce(key, endpoint)
            if ready is not None:
                ready(endpoint)
        await task
    finally:
        withdraw(key, os.getpid())
        await service.aclose()
