"""``push-exclude``, matched in a helper process with a time limit.

CPython's ``re`` holds the GIL for as long as a match runs: a pattern that backtracks badly on
a store path (``^/nix/store/(\\w+)+-doc$``) would stall every thread of nix-job, the drain
deadline included. In a child process a slow match can be abandoned: the process is killed, the
paths of that batch stay home (fail closed: they are not uploaded) and are reported, and the
next batch gets a fresh process. ``pattern_problem`` refuses the classic catastrophic shape
(nested unbounded repeats) when the input is parsed, so most users never meet the time limit.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: What a batch may take before its paths are given up on: a base plus a little per path.
BASE_LIMIT_S = 2.0
PER_PATH_LIMIT_S = 0.0005

# The helper: one JSON list of paths per line in, the indices that match per line out.
_WORKER = """
import json, re, sys
pattern = re.compile(sys.argv[1])
for line in sys.stdin:
    paths = json.loads(line)
    sys.stdout.write(json.dumps([i for i, p in enumerate(paths) if pattern.search(p)]) + "\\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    excluded: frozenset[str]  # the pattern matched
    undecided: tuple[str, ...]  # the time limit passed first: not uploaded either


class ExcludeMatcher:
    """Matches store paths against one pattern in a helper Python process. Thread-safe only
    in the sense the push session needs: one planner thread calls ``match``."""

    def __init__(
        self,
        pattern: str,
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        base_limit_s: float = BASE_LIMIT_S,
    ) -> None:
        self.pattern = pattern
        self._env = dict(env) if env is not None else None
        self._python = python
        self._base_limit_s = base_limit_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def match(self, paths: Sequence[str]) -> Verdict:
        if not paths:
            return Verdict(excluded=frozenset(), undecided=())
        limit = self._base_limit_s + PER_PATH_LIMIT_S * len(paths)
        try:
            indices = self._ask(list(paths), time.monotonic() + limit)
        except (OSError, ValueError) as exc:
            log.warning("push-exclude could not be matched (%s); these paths stay home", exc)
            self.close()
            return Verdict(excluded=frozenset(), undecided=tuple(paths))
        if indices is None:
            log.warning(
                "push-exclude took longer than %.1f s on %d path(s); they are not uploaded",
                limit,
                len(paths),
            )
            self.close()
            return Verdict(excluded=frozenset(), undecided=tuple(paths))
        return Verdict(excluded=frozenset(paths[i] for i in indices), undecided=())

    def close(self) -> None:
        proc, self._proc = self._proc, None
        self._buffer = b""
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._proc = subprocess.Popen(
                [self._python, "-I", "-c", _WORKER, self.pattern],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self._env,
            )
        return self._proc

    def _ask(self, paths: list[str], deadline: float) -> list[int] | None:
        """The matching indices, or None when ``deadline`` passed first."""
        proc = self._start()
        assert proc.stdin is not None  # noqa: S101 - PIPE was requested
        assert proc.stdout is not None  # noqa: S101 - PIPE was requested
        proc.stdin.write(json.dumps(paths).encode() + b"\n")
        proc.stdin.flush()
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ValueError("the matcher process ended")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        data: Any = json.loads(line)
        if not isinstance(data, list) or not all(isinstance(i, int) for i in data):
            raise ValueError("the matcher answered something that is not a list of indices")
        return [i for i in data if 0 <= i < len(paths)]
