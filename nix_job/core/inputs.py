"""The action's inputs: one table (``INPUT_SPECS``) and a strict parser. Pure.

Composite actions get no ``INPUT_*`` variables (actions/runner#665): action.yml maps every
input to ``NIX_JOB_<UPPER_SNAKE>`` in the step's ``env:``. ``parse_inputs`` reads that mapping
and reports *every* problem at once, naming the input and the bad value, before anything runs.
The contract test keeps this table, action.yml and the README inputs table in sync.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from nix_job.core.errors import InputError
from nix_job.core.nixconf import line_problem
from nix_job.core.patterns import pattern_problem as pattern_problem  # noqa: PLC0414 - re-exported (it lived here)
from nix_job.core.urls import (
    audience_problem,
    exchange_url_problem,
    origin,
    show_url,
    url_problem,
)

Group = Literal["Run", "Cache", "Publishing", "Nix", "Advanced"]
Installer = Literal["auto", "upstream", "determinate", "none"]

CACHE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_+]{0,49}$")
NIX_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")
SHA256_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# Key names seen in practice: cache.nixos.org-1, <name>.cachix.org-1, an Attic cache's name.
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@\-]{0,127}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    name: str
    default: str
    group: Group
    description: str
    # A credential: read by the entrypoint as a secret (never a field of ``Inputs``, never
    # printed), and removed from the process environment before anything else runs.
    secret: bool = False

    @property
    def env(self) -> str:
        return "NIX_JOB_" + self.name.upper().replace("-", "_")

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


INPUT_SPECS: tuple[InputSpec, ...] = (
    InputSpec(
        name="command",
        default="nix build .#default",
        group="Run",
        description="Bash script to run (`bash -eo pipefail`). Its exit code is the action's.",
    ),
    InputSpec(
        name="working-directory",
        default=".",
        group="Run",
        description="Directory to run the command in, relative to the workspace "
        "(the repository checkout).",
    ),
    InputSpec(
        name="attic-enabled",
        default="true",
        group="Cache",
        description='`"false"` is the raw-Nix opt-out: Nix only, no cache attached or touched.',
    ),
    InputSpec(
        name="attic-server",
        default="",
        group="Cache",
        description="Attic server URL, e.g. `https://cache.example.com/`. "
        "Overrides the runner hint `ATTIC_SERVER`.",
    ),
    InputSpec(
        name="attic-cache",
        default="",
        group="Cache",
        description="Attic cache name. Overrides the runner hint `ATTIC_CACHE`.",
    ),
    InputSpec(
        name="attic-public-key",
        default="",
        group="Cache",
        description="Pin the cache's signing key (`name:base64`). "
        "Empty: discovered from the server. A pinned key the server contradicts is an error.",
    ),
    InputSpec(
        name="attic-token-exchange",
        default="",
        group="Cache",
        description="URL of a token exchange (`nix-job token-exchange`) that trades this job's "
        "OIDC ID token for a short-lived Attic token, replacing `ATTIC_TOKEN`. https:// (http:// "
        "only for loopback). GitHub needs `permissions: id-token: write`; GitLab, `id_tokens:` "
        "`NIX_JOB_ID_TOKEN`. Empty: off.",
    ),
    InputSpec(
        name="oidc-audience",
        default="",
        group="Cache",
        description="Audience of the ID token requested for `attic-token-exchange`: the "
        "`audience` of the exchange policy's issuer. Empty: the exchange URL's origin, e.g. "
        "`https://attic-exchange.example.com`.",
    ),
    InputSpec(
        name="push-cache",
        default="false",
        group="Publishing",
        description="Publish to the cache. Takes effect only on trusted default-branch runs "
        "with `ATTIC_TOKEN` set or a push grant from `attic-token-exchange`; pull requests stay "
        "read-only.",
    ),
    InputSpec(
        name="require-cache-push",
        default="false",
        group="Publishing",
        description="On runs that may publish, fail the action (once the command succeeded) "
        "when uploads failed or the cache could not be attached. Default: a warning.",
    ),
    InputSpec(
        name="push-exclude",
        default="",
        group="Publishing",
        description="Python regular expression; store paths matching it are never uploaded.",
    ),
    InputSpec(
        name="push-paths",
        default="",
        group="Publishing",
        description="Extra paths (whitespace-separated) whose closures are pushed at the end, "
        "besides the command's `result*` links.",
    ),
    InputSpec(
        name="push-jobs",
        default="6",
        group="Publishing",
        description="Concurrent uploads (1–64).",
    ),
    InputSpec(
        name="drain-timeout",
        default="120",
        group="Publishing",
        description="Seconds allowed after the command for the final push and the upload "
        "queue to drain (0–3600); what is left is reported, never waited for.",
    ),
    InputSpec(
        name="nix-installer",
        default="auto",
        group="Nix",
        description="`auto` (reuse Nix, else install upstream Nix), `upstream`, "
        "`determinate`, or `none` (Nix must already be installed).",
    ),
    InputSpec(
        name="nix-version",
        default="",
        group="Nix",
        description="Nix version to install when Nix is missing, e.g. `2.24.10`. "
        "Empty: the installer's default.",
    ),
    InputSpec(
        name="nix-installer-url",
        default="",
        group="Nix",
        description="Installer URL override (mirrors, air-gapped runners). "
        "Empty: the official URL for the chosen installer and version.",
    ),
    InputSpec(
        name="nix-installer-sha256",
        default="",
        group="Nix",
        description="Expected SHA-256 (hex) of the downloaded installer; checked when given.",
    ),
    InputSpec(
        name="extra-conf",
        default="",
        group="Nix",
        description="Extra nix.conf lines for this job, applied whether or not Nix was "
        "installed by nix-job, and removed afterwards.",
    ),
    InputSpec(
        name="github-token",
        default="",
        group="Advanced",
        description="Token for one GitHub API call, only when the event payload lacks the "
        "default branch (never the case for `push`, `workflow_dispatch` and `schedule` on "
        "github.com). Empty by default: nix-job holds no GitHub token. Never passed to the "
        "command.",
        secret=True,
    ),
)

SPECS_BY_NAME = {spec.name: spec for spec in INPUT_SPECS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Inputs:
    command: str
    working_directory: str
    attic_enabled: bool
    attic_server: str | None
    attic_cache: str | None
    attic_public_key: str | None
    attic_token_exchange: str | None
    oidc_audience: str | None  # resolved: the given value, else the exchange URL's origin
    push_cache: bool
    require_cache_push: bool
    push_exclude: str | None
    push_paths: tuple[str, ...]
    push_jobs: int
    drain_timeout: int
    nix_installer: Installer
    nix_version: str | None
    nix_installer_url: str | None
    nix_installer_sha256: str | None
    extra_conf: str


def _show(value: str) -> str:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return repr(shown)


def parse_bool(name: str, value: str, problems: list[str]) -> bool:
    text = value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    problems.append(f"`{name}` must be true or false, got {_show(value)}")
    return False


def parse_int(name: str, value: str, low: int, high: int, problems: list[str]) -> int:
    text = value.strip()
    if re.fullmatch(r"\d{1,9}", text) and low <= int(text) <= high:
        return int(text)
    problems.append(f"`{name}` must be a whole number from {low} to {high}, got {_show(value)}")
    return low


def public_key_problem(value: str) -> str | None:
    """Why ``value`` is not a Nix public key ``name:base64(32 bytes)``, or None."""
    name, sep, data = value.partition(":")
    if not sep or not name or ":" in data:
        return "must look like `name:base64`"
    if not KEY_NAME_RE.match(name):
        # SECURITY: the key goes into nix.conf; a name with a newline would add settings.
        return "has a key name other than 1–128 of A–Z a–z 0–9 . _ + @ -"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return "has invalid base64 after the colon"
    if len(raw) != 32:
        return f"must hold a 32-byte ed25519 key, not {len(raw)} bytes"
    return None


def cache_name_problem(value: str) -> str | None:
    if CACHE_NAME_RE.match(value):
        return None
    return "must be 1–50 characters of A–Z a–z 0–9 - _ +, starting with a letter or digit"


def _optional(value: str) -> str | None:
    text = value.strip()
    return text or None


def _exchange_inputs(
    raw: Callable[[str], str], problems: list[str]
) -> tuple[str | None, str | None]:
    """``attic-token-exchange`` and ``oidc-audience`` (default: the exchange URL's origin)."""
    exchange, audience = _optional(raw("attic-token-exchange")), _optional(raw("oidc-audience"))
    if audience is not None and (why := audience_problem(audience)):
        problems.append(f"`oidc-audience` {_show(audience)} {why}")
    if exchange is None and audience is not None:
        problems.append(
            "`oidc-audience` is set but `attic-token-exchange` is empty; set the exchange's URL "
            "too, or remove oidc-audience"
        )
    if exchange is not None and (why := exchange_url_problem(exchange)):
        problems.append(f"`attic-token-exchange` {show_url(exchange)} {why}")
    if exchange is None:
        return None, None
    return exchange, audience or origin(exchange)


def parse_inputs(env: Mapping[str, str], *, is_dir: Callable[[str], bool]) -> Inputs:
    """Parse the ``NIX_JOB_*`` mapping. Raises InputError listing every problem.

    ``is_dir`` tells whether a working directory exists (injected to keep this pure); it
    receives the value as given, relative to the workspace.
    """
    problems: list[str] = []

    def raw(name: str) -> str:
        spec = SPECS_BY_NAME[name]
        value = env.get(spec.env)
        return spec.default if value is None else value

    command = raw("command")
    if not command.strip():
        problems.append("`command` is empty; give the bash script to run")
    if "\x00" in command:
        problems.append("`command` contains a NUL byte")

    working_directory = raw("working-directory").strip() or "."
    if "\x00" in working_directory or "\n" in working_directory:
        problems.append(f"`working-directory` is not a usable path: {_show(working_directory)}")
    elif not is_dir(working_directory):
        problems.append(
            f"`working-directory` {_show(working_directory)} does not exist or is not a directory"
        )

    attic_enabled = parse_bool("attic-enabled", raw("attic-enabled"), problems)

    attic_server = _optional(raw("attic-server"))
    if attic_server is not None and (why := url_problem(attic_server)):
        problems.append(f"`attic-server` {show_url(attic_server)} {why}")

    attic_cache = _optional(raw("attic-cache"))
    if attic_cache is not None and (why := cache_name_problem(attic_cache)):
        problems.append(f"`attic-cache` {_show(attic_cache)} {why}")

    attic_public_key = _optional(raw("attic-public-key"))
    if attic_public_key is not None and (why := public_key_problem(attic_public_key)):
        problems.append(f"`attic-public-key` {_show(attic_public_key)} {why}")

    attic_token_exchange, oidc_audience = _exchange_inputs(raw, problems)

    push_cache = parse_bool("push-cache", raw("push-cache"), problems)
    require_cache_push = parse_bool("require-cache-push", raw("require-cache-push"), problems)

    push_exclude = _optional(raw("push-exclude"))
    if push_exclude is not None and (why := pattern_problem(push_exclude)):
        problems.append(f"`push-exclude` {_show(push_exclude)} {why}")

    push_paths = tuple(raw("push-paths").split())
    if any("\x00" in p for p in push_paths):
        problems.append("`push-paths` contains a NUL byte")

    push_jobs = parse_int("push-jobs", raw("push-jobs"), 1, 64, problems)
    drain_timeout = parse_int("drain-timeout", raw("drain-timeout"), 0, 3600, problems)

    installer_text = raw("nix-installer").strip().lower()
    nix_installer: Installer = "auto"
    if installer_text in ("auto", "upstream", "determinate", "none"):
        nix_installer = installer_text  # type: ignore[assignment]
    else:
        problems.append(
            "`nix-installer` must be one of auto, upstream, determinate, none, "
            f"got {_show(raw('nix-installer'))}"
        )

    nix_version = _optional(raw("nix-version"))
    if nix_version is not None and not NIX_VERSION_RE.match(nix_version):
        problems.append(f"`nix-version` must look like 2.24 or 2.24.10, got {_show(nix_version)}")

    nix_installer_url = _optional(raw("nix-installer-url"))
    if nix_installer_url is not None and (why := url_problem(nix_installer_url)):
        problems.append(f"`nix-installer-url` {show_url(nix_installer_url)} {why}")

    nix_installer_sha256 = _optional(raw("nix-installer-sha256"))
    if nix_installer_sha256 is not None:
        if SHA256_HEX_RE.match(nix_installer_sha256):
            nix_installer_sha256 = nix_installer_sha256.lower()
        else:
            problems.append(
                "`nix-installer-sha256` must be 64 hexadecimal characters, "
                f"got {_show(nix_installer_sha256)}"
            )

    extra_conf = raw("extra-conf")
    for number, line in enumerate(extra_conf.split("\n"), start=1):
        text = line.strip()
        if why := line_problem(text):
            problems.append(f"`extra-conf` line {number} {why}: {_show(text)}")

    if problems:
        raise InputError(problems)

    return Inputs(
        command=command,
        working_directory=working_directory,
        attic_enabled=attic_enabled,
        attic_server=attic_server,
        attic_cache=attic_cache,
        attic_public_key=attic_public_key,
        attic_token_exchange=attic_token_exchange,
        oidc_audience=oidc_audience,
        push_cache=push_cache,
        require_cache_push=require_cache_push,
        push_exclude=push_exclude,
        push_paths=push_paths,
        push_jobs=push_jobs,
        drain_timeout=drain_timeout,
        nix_installer=nix_installer,
        nix_version=nix_version,
        nix_installer_url=nix_installer_url,
        nix_installer_sha256=nix_installer_sha256,
        extra_conf=extra_conf,
    )
