"""Attach the Attic cache for reads: discover the cache config, plan the reads, write the
temporary netrc for the token, and hand back the settings, problems and facts to report.

Nothing here prints, and no message or fact ever carries the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from nix_job.cache.netrc_file import TempNetrc, write_temp_netrc
from nix_job.cache.plan import (
    CacheConfigView,
    Discovery,
    discovery_problem,
    plan_read,
    read_settings,
)
from nix_job.cache.target import CacheTarget
from nix_job.core.errors import DOCS_URL, AtticError
from nix_job.core.problem import Problem
from nix_job.core.report import CacheFacts
from nix_job.core.secret import Secret

DEFAULT_NETRC = Path("/etc/nix/netrc")

_TITLE_READS = "nix-job: cache reads limited"
_HINT_AUTH = DOCS_URL + "401-or-403-from-attic"


class ConfigSource(Protocol):
    """Fetches the cache config; ``nix_job.attic_client.AtticClient`` in production."""

    def cache_config(self) -> CacheConfigView: ...


def discover(source: ConfigSource, *, target: CacheTarget, token: Secret | None) -> Discovery:
    """Ask the server for the cache config; failures become a ``Discovery.problem``."""
    try:
        config = source.cache_config()
    except (AtticError, httpx.HTTPError) as error:
        if isinstance(error, httpx.HTTPError):  # the client wraps transport errors; not others
            error = AtticError(
                f"{type(error).__name__}: {error}. Check the URL (scheme, host, port, path).",
                status=None,
            )
        text = discovery_problem(error, target=target, token_present=bool(token))
        return Discovery(config=None, problem=_redact(text, token))
    return Discovery(config=config, problem=None)


# ---------------------------------------------------------------------------------------------
# Composition.


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """The read side, ready to apply: nix.conf settings, problems to report, summary facts, and
    the netrc to remove (``cleanup``, in ``finally``)."""

    settings: tuple[tuple[str, str], ...]  # (name, value) nix.conf settings for the reads
    problems: tuple[Problem, ...]
    facts: CacheFacts | None  # None when no cache is attached
    netrc: TempNetrc | None
    netrc_host: str | None = None  # the host of the token's entry in ``netrc``

    @property
    def attached(self) -> bool:
        return bool(self.settings)

    @property
    def conf_lines(self) -> tuple[str, ...]:
        """The settings as nix.conf lines."""
        return tuple(f"{name} = {value}" for name, value in self.settings)

    def cleanup(self) -> Problem | None:
        return self.netrc.cleanup() if self.netrc is not None else None

    def describe(self) -> str:
        """One log line saying what was attached (no secrets in it)."""
        facts = self.facts
        if facts is None:
            return "nix-job: no Attic cache attached for reads"
        visibility = {True: "public", False: "private", None: "visibility unknown"}
        return (
            f"nix-job: reading from {facts.substituter} (cache `{facts.cache}` on "
            f"{facts.server}, {visibility[facts.is_public]}; key {facts.key_source}; "
            f"{'authenticated' if facts.authenticated_reads else 'anonymous'} reads)"
        )


def _redact(text: str, token: Secret | None) -> str:
    if token is None:
        return text
    for form in token.derived_forms():
        if form:
            text = text.replace(form, "***")
    return text


def usable_token(token: Secret | None) -> Secret | None:
    """The token as Nix will send it: surrounding whitespace (a pasted newline) removed."""
    if token is None or not token.reveal().strip():
        return None
    return Secret(token.reveal().strip())


def attach_reads(
    *,
    target: CacheTarget,
    pinned_key: str | None,
    source: ConfigSource,
    token: Secret | None,
    base_netrc: Path = DEFAULT_NETRC,
    temp_root: Path,
) -> Attachment:
    """Discover, plan, and (with a token) write the netrc. Raises CacheConfigError only for a
    pinned key the server contradicts; every other failure is a warning and the command runs.

    ``base_netrc`` is the effective ``netrc-file`` Nix would use (default /etc/nix/netrc);
    ``temp_root`` is RUNNER_TEMP.
    """
    token = usable_token(token)
    discovery = discover(source, target=target, token=token)
    plan = plan_read(
        target=target, pinned_key=pinned_key, discovery=discovery, token_present=bool(token)
    )
    problems = list(plan.problems)
    if plan.substituter is None or plan.public_key is None:
        return Attachment(settings=(), problems=tuple(problems), facts=None, netrc=None)

    file: TempNetrc | None = None
    host = plan.netrc_host
    if token is not None and host:
        reason: str | None = None
        try:
            if any(c.isspace() for c in str(temp_root)):
                reason = f"{temp_root} contains whitespace, which a nix.conf path cannot hold"
            else:
                written = write_temp_netrc(
                    host=host, token=token, base_netrc=base_netrc, temp_root=temp_root
                )
                file = written.file
                problems.extend(written.problems)
        except ValueError as error:
            reason = str(error)  # names the problem, never the value
        except OSError as error:
            reason = f"{error.strerror or type(error).__name__} (in {temp_root})"
        if reason is not None:
            problems.append(
                Problem.warning(
                    _TITLE_READS,
                    _redact(
                        f"The temporary netrc for {host} could not be written: {reason}. "
                        "Reads are anonymous, so a private cache answers 401 and everything "
                        "is built from source. Check RUNNER_TEMP and the ATTIC_TOKEN secret "
                        "(one line, no spaces).",
                        token,
                    ),
                    _HINT_AUTH,
                )
            )

    settings = read_settings(
        substituter=plan.substituter,
        public_key=plan.public_key,
        netrc_path=file.path if file else None,
    )
    facts = CacheFacts(
        server=target.server,
        cache=target.cache,
        source=target.source_text,
        substituter=plan.substituter,
        public_key=plan.public_key,
        key_source=plan.key_source or "none",
        authenticated_reads=file is not None,
        is_public=plan.is_public,
    )
    return Attachment(
        settings=settings,
        problems=tuple(problems),
        facts=facts,
        netrc=file,
        netrc_host=host if file is not None else None,
    )
