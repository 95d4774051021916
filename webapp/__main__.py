"""`python -m webapp --model DIR [--index DIR] [--port 8000]`: serve the drawing page and its JSON API.

The page draws with a mouse, a finger or a pen and shows the model's top classes and the nearest
gallery items as you draw (README: Draw in the browser). It listens on 127.0.0.1 unless --host
says otherwise; --port 0 picks a free port, and the address is printed on start."""

from __future__ import annotations

import sys

import tf_startup  # before anything imports TensorFlow

tf_startup.quiet()

import configuration_sketch as cs  # noqa: E402


def main(argv: list[str]) -> int:
    parsed = cs.parse_command(argv, [cs.ServeConfig], "webapp", __doc__)
    if isinstance(parsed, int):
        return parsed
    rest, flag_values = parsed
    if rest[1:]:
        print(f"webapp: unexpected arguments {rest[1:]}; see python -m webapp --help", file=sys.stderr)
        return 2
    config = cs.from_flags(cs.ServeConfig, flag_values)
    from serving.export import ExportError
    from serving.quiet import stderr_to_log
    from webapp.app import create_app
    from webapp.inputs import Limits
    from webapp.server import LOOPBACK, listen, server_for
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
    server_for(create_app(service), verbose=config.verbose, max_concurrency=config.max_concurrency).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
