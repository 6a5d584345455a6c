"""The Attic double in its own process for benchmarks: seeded objects in, request counts out.

``python -m bench.double --state-file S [--seed F] [--log-file L]`` serves ``AtticDouble``
(tests/attic_double) until SIGTERM, so its hashing does not share the uploader's GIL.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests.attic_double import AtticDouble

CACHE = "bench"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.double")
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument(
        "--seed",
        type=Path,
        help="JSON lines {store_path, references, nar_b64} stored before serving",
    )
    parser.add_argument(
        "--log-file", type=Path, help="where to write request counts when stopped (JSON)"
    )
    return parser.parse_args(argv)


def _disable_nagle(double: AtticDouble) -> None:
    """Answer without Nagle's algorithm, as atticd (hyper) effectively does.

    ``BaseHTTPRequestHandler`` writes the status and headers, then the body, in two sends; with
    Nagle on, the second waits for the client's delayed ACK (about 40 ms on Linux), so every
    request to the double costs 40 ms that a real server does not. Remove this once
    tests/attic_double sets ``disable_nagle_algorithm = True`` on its handler.
    """
    server = getattr(double, "_server", None)
    handler = getattr(server, "RequestHandlerClass", None)
    if server is None or handler is None:
        raise RuntimeError("AtticDouble changed: bench.double cannot reach its request handler")
    if not getattr(handler, "disable_nagle_algorithm", False):
        server.RequestHandlerClass = type(
            "BenchHandler", (handler,), {"disable_nagle_algorithm": True}
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with AtticDouble() as double:
        _disable_nagle(double)
        double.create_cache(CACHE)
        seeded = 0
        if args.seed:
            with args.seed.open() as lines:
                for line in lines:
                    item = json.loads(line)
                    double.put_path(
                        CACHE,
                        store_path=item["store_path"],
                        nar=base64.b64decode(item["nar_b64"]),
                        references=item.get("references", ()),
                    )
                    seeded += 1
        state = {
            "url": double.url,
            "cache": CACHE,
            "token": double.make_token({CACHE: "rw"}, sub="bench"),
            "seeded": seeded,
        }
        tmp = args.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(args.state_file)
        stop.wait()
        if args.log_file:
            requests = double.requests
            counts = Counter(f"{r.method} {r.path.split('?')[0]}" for r in requests)
            failed = sum(1 for r in requests if r.status is None or r.status >= 400)
            args.log_file.write_text(
                json.dumps({"total": len(requests), "failed": failed, "by_endpoint": counts})
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
