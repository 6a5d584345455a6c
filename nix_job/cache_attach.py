"""Attach the Attic cache for reads: resolve server and cache, discover the cache config, check a
pinned key, plan the ``extra-*`` nix.conf lines, and write the temporary netrc for the token.

Pure decisions (``resolve_target``, ``discover``'s message mapping, ``plan_read``) are separate
from the one I/O step (``write_temp_netrc``); ``attach_reads`` composes them. Nothing here
prints, and no message or fact ever carries the token.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

import httpx

from nix_job import netrc
from nix_job.errors import DOCS_URL, AtticError, CacheConfigError
from nix_job.inputs import cache_name_problem, public_key_problem, url_problem
from nix_job.report import CacheFacts, Kind, Problem
from nix_job.secret import Secret

Source = Literal["input", "hint"]
KeySource = Literal["pinned", "discovered"]

DEFAULT_NETRC = Path("/etc/nix/netrc")

_TITLE_RESOLVE = "nix-job: no Attic cache"
_TITLE_DISCOVERY = "nix-job: Attic cache discovery failed"
_TITLE_READS = "nix-job: cache reads limited"
_HINT_CONFIGURE = DOCS_URL + "reading-from-the-cache"
_HINT_AUTH = DOCS_URL + "401-or-403-from-attic"


def _problem(kind: Kind, title: str, message: str, hint_url: str | None = None) -> Problem:
    return Problem(kind=kind, title=title, message=message, hint_url=hint_url)


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


def normalise_server(url: str) -> str:
    """The server URL with exactly one trailing ``/``, so API paths join onto it (attic does
    the same with ``Url::join``)."""
    return url.strip().rstrip("/") + "/"


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
            _problem(
                "warning",
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
                server=normalise_server(server_url),
                cache=cache_name,
                server_source=server_from,
                cache_source=cache_from,
            )
            return TargetResolution(target=target, problems=())
        case None, None:
            problems.append(
                _problem(
                    "notice",
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
                    f"the Attic server {normalise_server(server_url)} (from {names[server_from]})",
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
    return _problem(
        "warning",
        _TITLE_RESOLVE,
        f"Only {have} is configured; {missing} is missing. Set both to use the cache; running "
        "without a cache.",
        _HINT_CONFIGURE,
    )


# ---------------------------------------------------------------------------------------------
# Discovery: GET {server}_api/v1/cache-config/{cache}


class CacheConfigView(Protocol):
    """The fields of ``nix_job.attic_client.CacheConfig`` that the read path uses."""

    @property
    def substituter_endpoint(self) -> str | None: ...
    @property
    def public_key(self) -> str | None: ...
    @property
    def is_public(self) -> bool | None: ...


class ConfigSource(Protocol):
    """Fetches the cache config; ``nix_job.attic_client.AtticClient`` in production."""

    def cache_config(self) -> CacheConfigView: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    """The cache config, or why it could not be had (``problem`` says what to check)."""

    config: CacheConfigView | None
    problem: str | None


def discovery_problem(
    error: AtticError | httpx.HTTPError, *, target: CacheTarget, token_present: bool
) -> str:
    """What failed, why, and what to check, for a failed cache-config request. Pure."""
    where = f"Attic server {target.server} (cache `{target.cache}`)"
    if isinstance(error, httpx.HTTPError):
        return (
            f"Could not reach {where}: {type(error).__name__}: {error}. Check the URL "
            "(scheme, host, port, path), DNS and network access from this runner (firewalls "
            "and proxies on self-hosted runners), and that the server is up."
        )
    status = error.status
    if status is None:  # attic_client's AtticUnavailableError for transport failures
        return (
            f"Could not reach {where}: {error.message} Also check DNS and network access from "
            "this runner (firewalls and proxies on self-hosted runners), and that the server "
            "is up."
        )
    if status == 401 and token_present:
        return (
            f"{where} answered 401 Unauthorized to the cache-config request: it ignored "
            "ATTIC_TOKEN or the token grants nothing on this cache. Check that the token was "
            "issued by this server (not another one, and not before the server's token secret "
            "was changed), that it has not expired, that it grants pull (`r`) on "
            f"`{target.cache}`, and that the cache name is right (Attic answers 401, not 404, "
            "to callers without any permission on a cache)."
        )
    if status == 401:
        return (
            f"{where} answered 401 Unauthorized to an anonymous cache-config request: the "
            "cache is private, or does not exist. Set the ATTIC_TOKEN secret to a token with "
            f"pull (`r`) permission on `{target.cache}`, or make the cache public; without "
            "it reads fail and everything is built from source."
        )
    if status == 403:
        return (
            f"{where} answered 403 Forbidden: the token is valid but lacks pull (`r`) on "
            f"`{target.cache}`. Issue a token that grants `r` on this cache "
            f"(e.g. `atticadm make-token --pull {target.cache} ...`)."
        )
    if status == 404:
        return (
            f"{where} answered 404 Not Found ({error.error or 'no error name'}). Check the "
            "cache name, and that the server URL includes any path prefix Attic is served "
            f"under: the API must answer at {target.server}_api/v1/."
        )
    return (
        f"{where} gave HTTP {status} to the cache-config request "
        f"({error.error or error.message}). "
        "Check that the URL points at an Attic server and look at the server's logs."
    )


def discover(source: ConfigSource, *, target: CacheTarget, token: Secret | None) -> Discovery:
    """Ask the server for the cache config; failures become a ``Discovery.problem``."""
    try:
        config = source.cache_config()
    except (AtticError, httpx.HTTPError) as error:
        text = discovery_problem(error, target=target, token_present=bool(token))
        return Discovery(config=None, problem=_redact(text, token))
    return Discovery(config=config, problem=None)


# ---------------------------------------------------------------------------------------------
# Planning the read side. Pure.


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPlan:
    """What to attach. ``substituter`` is None when nothing can be trusted."""

    target: CacheTarget
    substituter: str | None
    public_key: str | None
    key_source: KeySource | None
    is_public: bool | None
    authenticate: bool  # write a netrc entry for the substituter's host
    problems: tuple[Problem, ...]

    @property
    def netrc_host(self) -> str | None:
        if self.substituter is None or not self.authenticate:
            return None
        return urlsplit(self.substituter).hostname


def _key_parts(key: str) -> tuple[str, bytes] | None:
    name, _, data = key.partition(":")
    try:
        return name, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return None


def _key_problem(key: str) -> str | None:
    """``public_key_problem`` for text from the server, which may be anything (non-ASCII too)."""
    if not key.isascii():
        return "contains non-ASCII characters"
    return public_key_problem(key)


def same_key(a: str, b: str) -> bool:
    """Whether two ``name:base64`` keys are the same key (name and bytes, not spelling)."""
    pa, pb = _key_parts(a.strip()), _key_parts(b.strip())
    return pa is not None and pa == pb


def _substituter(target: CacheTarget, discovered: str | None, problems: list[Problem]) -> str:
    fallback = f"{target.server}{target.cache}"
    if not discovered:
        return fallback
    endpoint = discovered.strip().rstrip("/")
    why = url_problem(endpoint)
    if why is not None:
        problems.append(
            _problem(
                "warning",
                _TITLE_READS,
                f"The server reports a substituter endpoint that {why}; using {fallback} "
                "instead. Fix the server's `substituter-endpoint`/`api-endpoint` setting.",
                _HINT_CONFIGURE,
            )
        )
        return fallback
    server_parts, endpoint_parts = urlsplit(target.server), urlsplit(endpoint)
    if server_parts.scheme == "https" and endpoint_parts.scheme != "https":
        # SECURITY: never let the server downgrade reads (and the netrc token) to plain HTTP.
        problems.append(
            _problem(
                "warning",
                _TITLE_READS,
                f"The server reports the plain-HTTP substituter endpoint {endpoint} for an "
                f"HTTPS server; using {fallback} instead so the token never travels "
                "unencrypted. Fix the server's `substituter-endpoint`/`api-endpoint` (behind "
                "a reverse proxy, also send `X-Forwarded-Proto: https`).",
                _HINT_CONFIGURE,
            )
        )
        return fallback
    if endpoint_parts.hostname != server_parts.hostname:
        problems.append(
            _problem(
                "notice",
                _TITLE_READS,
                f"The server's substituter endpoint {endpoint} is on another host than "
                f"{target.server}; Nix reads from it. If it is an internal address that this "
                "runner cannot reach, set `api-endpoint` on the server (zhaofengli/attic#325).",
                _HINT_CONFIGURE,
            )
        )
    return endpoint


def plan_read(
    *,
    target: CacheTarget,
    pinned_key: str | None,
    discovery: Discovery,
    token_present: bool,
) -> ReadPlan:
    """Decide substituter, key and authentication. Raises CacheConfigError when the pinned key
    differs from the key the server reports: a cache that changed keys is never trusted."""
    problems: list[Problem] = []
    config = discovery.config
    pinned = (pinned_key or "").strip() or None
    discovered_key = ((config.public_key or "").strip() or None) if config else None
    if discovered_key is not None and (why := _key_problem(discovered_key)):
        problems.append(
            _problem(
                "warning",
                _TITLE_READS,
                f"The server reports a public key for `{target.cache}` that {why}; it is "
                "ignored. Pin the cache's key with `attic-public-key`.",
                _HINT_CONFIGURE,
            )
        )
        discovered_key = None

    if pinned is not None and discovered_key is not None and not same_key(pinned, discovered_key):
        raise CacheConfigError(
            f"The pinned `attic-public-key` {pinned} differs from the key {discovered_key} "
            f"that Attic server {target.server} reports for cache `{target.cache}`. A cache "
            "whose signing key changed is not trusted, so nothing was attached. If the key was "
            "rotated on purpose (e.g. `attic cache configure --regenerate-keypair`), pin the "
            "new key; otherwise check that attic-server and attic-cache name the intended "
            "cache, and who can reconfigure it."
        )

    if discovery.problem is not None:
        if pinned is None:
            problems.append(
                _problem(
                    "warning",
                    _TITLE_DISCOVERY,
                    f"{discovery.problem} Without the cache's public key nothing from it can "
                    "be trusted, so no cache is attached: the command still runs and builds "
                    "what it cannot get elsewhere. Pin the key with `attic-public-key` to keep "
                    "reading when discovery fails.",
                    _HINT_AUTH,
                )
            )
        else:
            problems.append(
                _problem(
                    "warning",
                    _TITLE_DISCOVERY,
                    f"{discovery.problem} The cache is still attached for reads with the "
                    "pinned `attic-public-key`; if the server refuses reads too, Nix skips it "
                    "and builds more.",
                    _HINT_AUTH,
                )
            )
    elif pinned is None and discovered_key is None:
        problems.append(
            _problem(
                "warning",
                _TITLE_READS,
                f"Attic server {target.server} reports no public key for `{target.cache}`, "
                "and none is pinned, so no cache is attached (Nix refuses unsigned "
                "substitutes). Pin the key with `attic-public-key`.",
                _HINT_CONFIGURE,
            )
        )

    key = pinned or discovered_key
    key_source: KeySource | None = "pinned" if pinned else "discovered" if key else None
    is_public = config.is_public if config is not None else None
    if key is None:
        return ReadPlan(
            target=target,
            substituter=None,
            public_key=None,
            key_source=None,
            is_public=is_public,
            authenticate=False,
            problems=tuple(problems),
        )

    substituter = _substituter(target, config.substituter_endpoint if config else None, problems)
    if is_public is False and not token_present:
        problems.append(
            _problem(
                "warning",
                _TITLE_READS,
                f"The cache `{target.cache}` is private and ATTIC_TOKEN is not set: Nix's "
                "reads will get 401 and everything is built from source. Set the ATTIC_TOKEN "
                "secret to a token with pull (`r`) permission on the cache.",
                _HINT_AUTH,
            )
        )
    return ReadPlan(
        target=target,
        substituter=substituter,
        public_key=key,
        key_source=key_source,
        is_public=is_public,
        authenticate=token_present,
        problems=tuple(problems),
    )


def conf_lines(*, substituter: str, public_key: str, netrc_path: Path | None) -> tuple[str, ...]:
    """nix.conf lines for the read side. Always the ``extra-`` forms, so cache.nixos.org and
    the user's own substituters stay configured; ``netrc-file`` only with a token."""
    lines = [f"extra-substituters = {substituter}", f"extra-trusted-public-keys = {public_key}"]
    if netrc_path is not None:
        lines.append(f"netrc-file = {netrc_path}")
    return tuple(lines)


# ---------------------------------------------------------------------------------------------
# The temporary netrc (the only I/O here).


@dataclass(frozen=True, slots=True, kw_only=True)
class TempNetrc:
    """A private netrc in its own private directory; ``cleanup`` deletes both (idempotent)."""

    path: Path
    directory: Path

    def cleanup(self) -> str | None:
        """Delete the file and its directory. Returns a warning text if the file survived."""
        netrc.remove_quietly(self.path)
        shutil.rmtree(self.directory, ignore_errors=True)
        if not os.path.lexists(self.path):
            return None
        return (
            f"Could not delete the temporary netrc {self.path}; it holds the Attic token "
            "(mode 0600). RUNNER_TEMP is emptied at the end of the job; on a self-hosted "
            "runner delete it by hand."
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetrcWrite:
    file: TempNetrc
    problems: tuple[Problem, ...]


def write_temp_netrc(*, host: str, token: Secret, base_netrc: Path, temp_root: Path) -> NetrcWrite:
    """Write ``<temp_root>/nix-job-<random>/netrc``: the netrc Nix would otherwise use
    (``base_netrc``; missing or unreadable means empty) with one entry for ``host`` replaced or
    added, so other hosts' credentials keep working. Mode 0600 from creation, atomic.

    Raises OSError when the file cannot be written, ValueError when the token or host cannot be
    written as a netrc word (the message never contains the token).
    """
    problems: list[Problem] = []
    try:
        existing = netrc.read_text(base_netrc)
    except FileNotFoundError:
        existing = ""
    except OSError as error:
        existing = ""
        problems.append(
            _problem(
                "notice",
                _TITLE_READS,
                f"Could not read the existing netrc {base_netrc} ({error.strerror}); the "
                "temporary netrc holds only the Attic entry, so credentials for other hosts in "
                "it are not used during this run.",
                _HINT_CONFIGURE,
            )
        )
    # SECURITY: the token reaches Nix only through this 0600 file (zhaofengli/attic#243).
    merged = netrc.render(netrc.merge(netrc.parse(existing), host=host, password=token.reveal()))
    directory = Path(tempfile.mkdtemp(prefix="nix-job-", dir=temp_root))  # mode 0700
    file = TempNetrc(path=directory / "netrc", directory=directory)
    try:
        netrc.write_private(file.path, merged)
    except BaseException:
        file.cleanup()
        raise
    return NetrcWrite(file=file, problems=tuple(problems))


# ---------------------------------------------------------------------------------------------
# Composition.


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """The read side, ready to apply: nix.conf lines, problems to report, summary facts, secret
    forms to mask, and the netrc to remove (``cleanup``, in ``finally``)."""

    conf_lines: tuple[str, ...]
    problems: tuple[Problem, ...]
    facts: CacheFacts | None  # None when no cache is attached
    mask: tuple[Secret, ...] = field(repr=False)
    netrc: TempNetrc | None

    @property
    def attached(self) -> bool:
        return bool(self.conf_lines)

    def cleanup(self) -> str | None:
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


def secret_forms(token: Secret) -> tuple[str, ...]:
    """Every form of the token that could leak: itself, and the Basic credentials Nix's curl
    builds from our netrc entry (plus the login-less form other tools use)."""
    basic = base64.b64encode(f"{netrc.LOGIN}:{token.reveal()}".encode()).decode()
    return (*token.derived_forms(), basic)


def _redact(text: str, token: Secret | None) -> str:
    if token is None:
        return text
    for form in secret_forms(token):
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
    mask = tuple(Secret(form) for form in secret_forms(token)) if token else ()
    discovery = discover(source, target=target, token=token)
    plan = plan_read(
        target=target, pinned_key=pinned_key, discovery=discovery, token_present=bool(token)
    )
    problems = list(plan.problems)
    if plan.substituter is None or plan.public_key is None:
        return Attachment(
            conf_lines=(), problems=tuple(problems), facts=None, mask=mask, netrc=None
        )

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
                _problem(
                    "warning",
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

    lines = conf_lines(
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
        conf_lines=lines,
        problems=tuple(problems),
        facts=facts,
        mask=mask,
        netrc=file,
    )


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def plaintext_token_problem(target: CacheTarget, *, token_present: bool) -> Problem | None:
    """A warning when the token would cross the network unencrypted (http:// to another host)."""
    parts = urlsplit(target.server)
    if not token_present or parts.scheme != "http":
        return None
    host = (parts.hostname or "").lower()
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    return _problem(
        "warning",
        _TITLE_READS,
        f"{target.server} is plain HTTP, so ATTIC_TOKEN travels unencrypted to {host}. "
        "Serve Attic over HTTPS (a reverse proxy in front of atticd) and use an https:// URL.",
        _HINT_CONFIGURE,
    )
