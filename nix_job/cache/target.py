"""Which Attic server and cache this run uses: the inputs, else the runner hints; and whether
the token would cross the network unencrypted. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from nix_job.core.errors import DOCS_URL
from nix_job.core.problem import Problem
from nix_job.core.urls import is_loopback, url_problem, with_slash
from nix_job.core.values import cache_name_problem

Source = Literal["input", "hint"]

_TITLE_RESOLVE = "nix-job: no Attic cache"
_TITLE_READS = "nix-job: cache reads limited"
_HINT_CONFIGURE = DOCS_URL + "reading-from-the-cache"


# ---------------------------------------------------------------------------------------------
# Resolution: inputs win, else runner hints.


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheTarget:
    server: str  # normalised: ends with "/"
    cache: str
    server_source: Source
    cache_source: Source

    @property
    def source_text(self) -> str:
        """Where the target came from, for the summary."""
        names = {"input": "inputs", "hint": "runner hints"}
        if self.server_source == self.cache_source:
            return names[self.server_source]
        return f"server from {names[self.server_source]}, cache from {names[self.cache_source]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetResolution:
    target: CacheTarget | None
    problems: tuple[Problem, ...]


def resolve_target(
    *, server_input: str | None, cache_input: str | None, env_hints: Mapping[str, str]
) -> TargetResolution:
    """Pick server and cache: the ``attic-server``/``attic-cache`` inputs (already validated by
    ``parse_inputs``), else the runner hints ``ATTIC_SERVER``/``ATTIC_CACHE``. Pure."""
    problems: list[Problem] = []
    names = {"input": "input", "hint": "runner hint"}

    def pick(
        value: str | None, hint: str, check: Callable[[str], str | None]
    ) -> tuple[str, Source] | None:
        """The value and where it came from; a bad hint is reported and gives None."""
        text = (value or "").strip()
        if text:
            return text, "input"
        hinted = env_hints.get(hint, "").strip()
        if not hinted:
            return None
        why = check(hinted)
        if why is None:
            return hinted, "hint"
        # SECURITY: the value is not echoed; a mistyped URL may hold credentials.
        problems.append(
            Problem.warning(
                _TITLE_RESOLVE,
                f"The runner hint {hint} is not usable: it {why}. Fix {hint} in the "
                "runner's environment, or override it with the "
                f"`{'attic-server' if hint == 'ATTIC_SERVER' else 'attic-cache'}` input. "
                "Running without a cache.",
                _HINT_CONFIGURE,
            )
        )
        return None

    server = pick(server_input, "ATTIC_SERVER", url_problem)
    cache = pick(cache_input, "ATTIC_CACHE", cache_name_problem)
    if problems:  # a bad hint: never guess around it
        return TargetResolution(target=None, problems=tuple(problems))
    match server, cache:
        case (server_url, server_from), (cache_name, cache_from):
            target = CacheTarget(
                server=with_slash(server_url),
                cache=cache_name,
                server_source=server_from,
                cache_source=cache_from,
            )
            return TargetResolution(target=target, problems=())
        case None, None:
            problems.append(
                Problem.notice(
                    _TITLE_RESOLVE,
                    "No Attic server configured: set attic-server/attic-cache or the runner "
                    "hints ATTIC_SERVER/ATTIC_CACHE to read from a cache; running without a "
                    "cache.",
                    _HINT_CONFIGURE,
                )
            )
        case (server_url, server_from), None:
            problems.append(
                _partial(
                    f"the Attic server {with_slash(server_url)} (from {names[server_from]})",
                    "the cache name (`attic-cache` input or ATTIC_CACHE runner hint)",
                )
            )
        case None, (cache_name, cache_from):
            problems.append(
                _partial(
                    f"the Attic cache `{cache_name}` (from {names[cache_from]})",
                    "the server (`attic-server` input or ATTIC_SERVER runner hint)",
                )
            )
    return TargetResolution(target=None, problems=tuple(problems))


def _partial(have: str, missing: str) -> Problem:
    return Problem.warning(
        _TITLE_RESOLVE,
        f"Only {have} is configured; {missing} is missing. Set both to use the cache; running "
        "without a cache.",
        _HINT_CONFIGURE,
    )


def plaintext_token_problem(target: CacheTarget, *, token_present: bool) -> Problem | None:
    """A warning when the token would cross the network unencrypted (http:// to another host)."""
    parts = urlsplit(target.server)
    if not token_present or parts.scheme != "http":
        return None
    host = (parts.hostname or "").lower()
    if is_loopback(host):
        return None
    return Problem.warning(
        _TITLE_READS,
        f"{target.server} is plain HTTP, so ATTIC_TOKEN travels unencrypted to {host}. "
        "Serve Attic over HTTPS (a reverse proxy in front of atticd) and use an https:// URL.",
        _HINT_CONFIGURE,
    )
