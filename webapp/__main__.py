"""`python -m webapp --model DIR [--index DIR] [--port 8000]`: serve the drawing page and its JSON API.

The page draws with a mouse, a finger or a pen and shows the model's top classes and the nearest
gallery items as you draw (README: Draw in the browser). It listens on 127.0.0.1 unless --host
says otherwise; --port 0 picks a free port, and the address is printed on start."""

from __future__ import annotations

import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import configuration_sketch as cs  # noqa: E402


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def parse_flags(argv: list[str]) -> cs.ServeConfig | int:
    """The config from the command line, or an exit code: 0 after --help, 2 after a bad flag."""
    flag_values = flags.FlagValues()
    cs.define_flags(cs.ServeConfig, flag_values)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print(flag_values.module_help(cs.__name__))
        return 0
    try:
        rest = flag_values(argv)[1:]
    except flags.Error as err:
        print(f"webapp: {err}", file=sys.stderr)
        return 2
    if rest:
        print(f"webapp: unexpected arguments {rest}; see python -m webapp --help", file=sys.stderr)
        return 2
    return cs.from_flags(cs.ServeConfig, flag_values)


def main(argv: list[str]) -> int:
    config = parse_flags(argv)
    if isinstance(config, int):
        return config
    import uvicorn

    from serving.export import ExportError
    from serving.quiet import stderr_to_log
    from webapp.app import create_app
    from webapp.inputs import Limits
    from webapp.service import open_service

    limits = Limits(config.max_body_bytes, config.max_strokes, config.max_points, config.max_image_pixels)
    try:
        with stderr_to_log(not config.verbose, prefix="webapp-"):
            service = open_service(config.model, config.index, limits=limits, k=config.k, polarity=config.polarity)
    except (ValueError, OSError, ExportError) as err:
        print(f"webapp: {err}", file=sys.stderr)
        return 2
    try:  # bound here, so --port 0 picks a free port with no race and the address printed is the real one
        sock = listen(config.host, config.port)
    except OSError as err:
        print(f"webapp: cannot listen on {config.host}:{config.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    what = ", ".join([
        f"{len(service.meta['class_names'])} classes" if service.classifies else "no classes (retrieval only)",
        f"gallery of {len(service.index)} items" if service.index is not None else "no gallery index"])
    print(f"serving {config.model} ({service.model.kind}, {what}) on http://{host}:{port}/ - Ctrl-C stops it",
          flush=True)
    if config.host not in LOOPBACK:
        print(f"webapp: listening on {config.host}: reachable from the network, without TLS or authentication",
              file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(
        create_app(service), log_level="info" if config.verbose else "warning", access_log=config.verbose,
        limit_concurrency=config.max_concurrency, timeout_keep_alive=5, server_header=False))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
