"""Run the Attic double in the foreground: ``python -m tests.attic_double --cache demo``.

Creates the cache, writes a JSON state file (url, cache, public_key, push and pull tokens) for
shell scripts, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests.attic_double.server import AtticDouble
from tests.attic_double.state import ServerConfig


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.attic_double", description="Attic-compatible test server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cache", default="demo", help="cache to create (default: demo)")
    parser.add_argument("--public", action="store_true", help="make the cache public")
    parser.add_argument("--priority", type=int, default=41)
    parser.add_argument(
        "--state-file", type=Path, required=True, help="where to write the JSON state"
    )
    parser.add_argument(
        "--token-valid-for", type=int, default=24 * 3600, help="token lifetime in seconds"
    )
    parser.add_argument(
        "--no-proof-of-possession",
        action="store_true",
        help="answer deduplicated uploads before reading their body",
    )
    return parser.parse_args(argv)


def _write_private(path: Path, text: str) -> None:
    """Atomic write with mode 0600: the state file holds tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    config = ServerConfig(require_proof_of_possession=not args.no_proof_of_possession)
    double = AtticDouble(host=args.host, port=args.port, config=config)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with double:
        cache = double.create_cache(args.cache, public=args.public, priority=args.priority)
        state = {
            "url": double.url,
            "cache": cache.name,
            "substituter": double.substituter_url(cache.name),
            "public_key": cache.public_key,
            "push_token": double.make_token(
                {cache.name: "rw"}, sub="push", valid_for=args.token_valid_for
            ),
            "pull_token": double.make_token(
                {cache.name: "r"}, sub="pull", valid_for=args.token_valid_for
            ),
            "pid": os.getpid(),
        }
        _write_private(args.state_file, json.dumps(state, indent=2) + "\n")
        print(
            f"attic-double serving {double.url} cache {cache.name!r}", file=sys.stderr, flush=True
        )
        stop.wait()
        print("attic-double stopping", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
