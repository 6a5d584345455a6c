"""The inputs' strict parser, over the one table (``nix_job.core.input_specs``). Pure.

Composite actions get no ``INPUT_*`` variables (actions/runner#665): action.yml maps every
input to ``NIX_JOB_<UPPER_SNAKE>`` in the step's ``env:``. ``parse_inputs`` reads that mapping
and reports *every* problem at once, naming the input and the bad value, before anything runs.
The contract test keeps this table, action.yml and the README inputs table in sync.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from nix_job.core.errors import InputError
from nix_job.core.input_specs import SPECS_BY_NAME
from nix_job.core.nixconf import line_problem
from nix_job.core.urls import (
    audience_problem,
    exchange_url_problem,
    origin,
    show_url,
    url_problem,
)
from nix_job.core.values import (
    CLOSURE_MODES,
    cache_name_problem,
    parse_size,
    pattern_problem,
    public_key_problem,
)

Installer = Literal["auto", "upstream", "determinate", "none"]
ClosureMode = Literal["runtime", "build", "outputs"]

NIX_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")
SHA256_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")


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
    push_max_size: int | None
    push_closure: ClosureMode
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

    push_max_size = None
    if max_size_text := raw("push-max-size").strip():
        push_max_size = parse_size(max_size_text)
        if push_max_size is None:
            problems.append(
                "`push-max-size` must be a size above zero such as 500M, 2G or 1.5GiB (binary "
                f"units), or empty for no limit; got {_show(max_size_text)}"
            )

    closure_text = raw("push-closure").strip().lower()
    push_closure: ClosureMode = "runtime"
    if closure_text in CLOSURE_MODES:
        push_closure = closure_text  # type: ignore[assignment]
    else:
        problems.append(
            f"`push-closure` must be one of {', '.join(CLOSURE_MODES)}, "
            f"got {_show(raw('push-closure'))}"
        )

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
        push_max_size=push_max_size,
        push_closure=push_closure,
        push_jobs=push_jobs,
        drain_timeout=drain_timeout,
        nix_installer=nix_installer,
        nix_version=nix_version,
        nix_installer_url=nix_installer_url,
        nix_installer_sha256=nix_installer_sha256,
        extra_conf=extra_conf,
    )
