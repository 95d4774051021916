"""Running the app on uvicorn: a socket bound before the server starts (so port 0 picks a free
port with no race, and the address printed is the real one), in the foreground or in a thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def server_for(app, *, verbose: bool = False, max_concurrency: int = 32) -> uvicorn.Server:
    """uvicorn quiet unless verbose, refusing connections over `max_concurrency` with 503 at once."""
    return uvicorn.Server(uvicorn.Config(
        app, log_level="info" if verbose else "warning", access_log=verbose, limit_concurrency=max_concurrency,
        timeout_keep_alive=5, server_header=False))


class BackgroundServer:
    """The app served from a thread on 127.0.0.1 (tests and benchmarks): `with BackgroundServer(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = listen(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = server_for(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the web app's server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
