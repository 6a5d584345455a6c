"""Finding paths registered while the service was not watching (the I/O half of catch-up; the
selection is ``nix_job.service.catchup``).

Asking Nix for every path's registration time (``nix path-info --json --all``) costs a JSON
document of the whole store: hundreds of megabytes on a big builder. So the store directory is
listed first and only entries whose inode changed recently (``ctime``, see
``catchup.CTIME_SLACK_S``) are asked about: first for validity, then for their registration
times, in chunks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from nix_job.core.errors import StoreError
from nix_job.process import CommandRunner
from nix_job.push.store_events import is_candidate
from nix_job.service.catchup import CTIME_SLACK_S, parse_registrations

log = logging.getLogger(__name__)

#: Paths per ``nix path-info`` call (argv stays far below ARG_MAX).
CHUNK = 2000
QUERY_TIMEOUT_S = 600.0


def recent_entries(store_dir: Path, *, since: float, logical_store_dir: str) -> list[str]:
    """Logical paths of the store entries that may be store paths and whose inode changed at
    or after ``since`` minus ``CTIME_SLACK_S``."""
    threshold = since - CTIME_SLACK_S
    found: list[str] = []
    logical = logical_store_dir.rstrip("/")
    with os.scandir(store_dir) as entries:
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                changed = entry.stat(follow_symlinks=False).st_ctime
            except OSError:  # collected meanwhile
                continue
            if changed >= threshold:
                found.append(f"{logical}/{entry.name}")
    return found


def registration_times(
    paths: Sequence[str],
    *,
    valid: Callable[[Iterable[str]], set[str]],
    runner: CommandRunner,
    env: Mapping[str, str],
    logical_store_dir: str,
    nix: str = "nix",
) -> dict[str, int]:
    """``{path: registrationTime}`` for the valid ones of ``paths``.

    Validity first: Nix 2.8's ``path-info`` tries the substituters for a path it does not
    have (measured), which costs network round trips for every half-built leftover.
    """
    ok = sorted(valid(paths))
    times: dict[str, int] = {}
    for start in range(0, len(ok), CHUNK):
        chunk = ok[start : start + CHUNK]
        argv = [nix, "--extra-experimental-features", "nix-command", "path-info", "--json"]
        done = runner.run([*argv, *chunk], env=env, timeout=QUERY_TIMEOUT_S)
        if done.returncode != 0:
            raise StoreError(
                f"`nix path-info --json` of {len(chunk)} store paths failed with exit code "
                f"{done.returncode}: {done.tail(5) or '(no output)'}. Check that Nix works "
                "for the service's user (NIX_REMOTE, allowed-users)."
            )
        try:
            times.update(parse_registrations(done.stdout, logical_store_dir))
        except ValueError as exc:
            raise StoreError(
                f"`nix path-info --json` printed something nix-job cannot read ({exc}); "
                "report it with `nix --version`."
            ) from exc
    return times
