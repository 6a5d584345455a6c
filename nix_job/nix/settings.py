"""nix.conf settings as text: parse and validate, render, the marked blocks nix-job adds to a
shared nix.conf (markers, owners, stripping), and checking effective values. Pure.

Never holds a secret: only the netrc *path* travels through configuration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from nix_job.core.errors import NixConfigError
from nix_job.core.nixconf import LINE_RE, MARKER_RE, NAME_RE, value_problem

MARK_BEGIN = "# BEGIN nix-job"
MARK_END = "# END nix-job"

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$")

# Settings that may carry credentials: kept client-side in NIX_CONFIG, never in a file.
SECRET_SETTINGS = frozenset({"access-tokens"})
# Settings a daemon uses and ignores from untrusted clients (daemon.cc, setOptions).
DAEMON_SIDE_SETTINGS = frozenset(
    {
        "substituters",
        "extra-substituters",
        "trusted-public-keys",
        "extra-trusted-public-keys",
        "trusted-substituters",
        "extra-trusted-substituters",
        "netrc-file",
        "require-sigs",
        "post-build-hook",
        "builders",
        "sandbox",
        "sandbox-paths",
        "extra-sandbox-paths",
        "narinfo-cache-negative-ttl",
        "narinfo-cache-positive-ttl",
    }
)
# Settings whose effective value is checked after applying.
VERIFIED_SETTINGS = frozenset(
    {
        "substituters",
        "extra-substituters",
        "trusted-public-keys",
        "extra-trusted-public-keys",
        "netrc-file",
    }
)

Setting = tuple[str, str]
Mode = Literal["env", "system-file", "env-ignored"]


# ---------------------------------------------------------------------------------------------
# Pure rendering


def _shown(line: str) -> str:
    return repr(line if len(line) <= 80 else line[:77] + "...")


def parse_settings(items: Sequence[Setting | str]) -> list[Setting | str]:
    """Validate ``(name, value)`` pairs and ``name = value`` lines (comments and blank lines
    allowed in line form). Returns pairs, with comments kept as ``str``. Raises NixConfigError
    naming every bad entry."""
    out: list[Setting | str] = []
    problems: list[str] = []
    for item in items:
        if isinstance(item, tuple):
            name, value = item
            if not NAME_RE.match(name):
                problems.append(f"{name!r} is not a nix.conf setting name")
            elif why := value_problem(value):
                problems.append(f"the value of {name} {why}")
            else:
                out.append((name, value.strip()))
            continue
        if "\0" in item:
            problems.append("a configuration line contains a NUL byte")
            continue
        for raw in item.split("\n"):  # Nix splits nix.conf on newlines only
            line = raw.strip()
            if not line:
                continue
            if MARKER_RE.search(line):
                problems.append(f"{_shown(line)} looks like nix-job's own block marker")
            elif line.startswith("#"):
                out.append(line)
            elif (match := LINE_RE.match(line)) and not (why := value_problem(match[2])):
                out.append((match[1], match[2].strip()))
            elif match:
                problems.append(f"the value of {match[1]} {why}")
            else:
                problems.append(f"{_shown(line)} is not a `name = value` setting")
    if problems:
        listed = "\n".join(f"- {p}" for p in problems)
        raise NixConfigError(
            f"{len(problems)} invalid nix.conf setting(s); nothing was applied:\n{listed}\n"
            "Write one `name = value` per line (see `man nix.conf`); `include` is not supported."
        )
    return out


def render_conf(items: Sequence[Setting | str]) -> str:
    """``name = value`` lines (comments kept), newline-terminated; validated."""
    lines = []
    for entry in parse_settings(items):
        lines.append(entry if isinstance(entry, str) else f"{entry[0]} = {entry[1]}".rstrip())
    return "".join(line + "\n" for line in lines)


def append_nix_config(existing: str | None, addition: str) -> str:
    """NIX_CONFIG with ``addition`` after the runner's own value, which is kept as it was."""
    if not existing or not existing.strip():
        return addition
    return existing.rstrip("\n") + "\n" + addition


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockOwner:
    """The nix-job process that wrote a block: its PID and the boot it ran in."""

    pid: int
    boot: str  # /proc/sys/kernel/random/boot_id; "" when unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeader:
    run_id: str
    owner: BlockOwner | None  # None: a block of the older format, without owner


def parse_header(line: str) -> BlockHeader | None:
    """The run id and owner of a ``# BEGIN nix-job`` line; None for any other line."""
    stripped = line.strip()
    if not stripped.startswith(MARK_BEGIN):
        return None
    words = stripped[len(MARK_BEGIN) :].split()
    fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    pid = fields.get("pid", "")
    owner = (
        BlockOwner(pid=int(pid), boot=fields.get("boot", "").strip("?"))
        if pid.isdecimal()
        else None
    )
    return BlockHeader(run_id=words[0] if words else "?", owner=owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleScan:
    text: str  # the input without the removed nix-job blocks
    run_ids: tuple[str, ...]  # runs whose blocks were removed
    unterminated: bool  # a removed BEGIN without END: everything after it was dropped
    kept: tuple[str, ...] = ()  # runs whose blocks were kept


def strip_blocks(text: str, keep: Callable[[BlockHeader], bool] = lambda _: False) -> StaleScan:
    """Remove every ``# BEGIN nix-job …`` … ``# END nix-job`` block for which ``keep`` is
    false. A BEGIN line inside a block ends that block and starts the next one."""
    out: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    current: tuple[BlockHeader, bool] | None = None  # the open block, and whether it is kept
    for line in text.splitlines(keepends=True):
        header = parse_header(line)
        if header is not None:
            current = (header, keep(header))
            (kept if current[1] else removed).append(header.run_id)
            if current[1]:
                out.append(line)
        elif current is not None:
            if current[1]:
                out.append(line)
            if line.strip() == MARK_END:
                current = None
        else:
            out.append(line)
    unterminated = current is not None and not current[1]
    return StaleScan(
        text="".join(out), run_ids=tuple(removed), unterminated=unterminated, kept=tuple(kept)
    )


def add_block(text: str, *, run_id: str, body: str, owner: BlockOwner | None = None) -> str:
    """``text`` with a marked block holding ``body`` appended (later lines win in nix.conf)."""
    base = text if not text or text.endswith("\n") else text + "\n"
    who = f" pid={owner.pid} boot={owner.boot or '?'}" if owner is not None else ""
    begin = f"{MARK_BEGIN} {run_id}{who} (temporary: removed when this job ends)\n"
    return base + begin + body + ("" if body.endswith("\n") or not body else "\n") + MARK_END + "\n"


def verify_settings(settings: Sequence[Setting], effective: Mapping[str, str]) -> list[str]:
    """Why each checked setting is not in effect (empty when all are)."""
    problems: list[str] = []
    for name, value in settings:
        if name not in VERIFIED_SETTINGS:
            continue
        target = name.removeprefix("extra-")
        if target not in effective:
            continue
        now = effective[target]
        if name == "netrc-file":
            ok = now.strip() == value.strip()
        elif name.startswith("extra-"):
            ok = set(value.split()) <= set(now.split())
        else:
            ok = now.split() == value.split()
        if not ok:
            problems.append(
                f"`{name} = {value}` is not in effect: the effective {target} is "
                f"{now or '(empty)'!r}. A later setting replaces it (a plain `{target} =` in "
                f"NIX_CONFIG, ~/.config/nix/nix.conf or NIX_USER_CONF_FILES); use "
                f"`extra-{target}` there instead"
            )
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPlan:
    """Where each setting of a job goes, decided once from the facts about the installation."""

    mode: Mode  # env: NIX_CONFIG only; system-file: a nix.conf block + daemon restart
    env_settings: tuple[Setting, ...]  # into NIX_CONFIG (nix-job's Nix calls and the command)
    file_settings: tuple[Setting, ...]  # into this run's block of the system nix.conf
    ignored: tuple[str, ...]  # names a daemon ignores from this untrusted user (env-ignored)


def requires_system_file(*, daemon: bool, trusted: bool, settings: Sequence[Setting]) -> bool:
    """A daemon ignores most settings of an untrusted client (``setOptions`` in NixOS/nix
    ``src/libstore/daemon.cc``): they must reach it through its own nix.conf."""
    return daemon and not trusted and any(name not in SECRET_SETTINGS for name, _ in settings)


def plan_delivery(
    *, daemon: bool, trusted: bool, privileged: bool, settings: Sequence[Setting]
) -> DeliveryPlan:
    """The delivery of ``settings``. Pure.

    - no daemon, or a daemon that trusts the user: everything through ``NIX_CONFIG``;
    - an untrusted daemon user with root or passwordless sudo (``privileged``): a block in the
      system nix.conf, except credentials (``access-tokens``), which never go to a file;
    - otherwise ``NIX_CONFIG`` anyway, naming the settings the daemon ignores.
    """
    every = tuple(settings)
    if not requires_system_file(daemon=daemon, trusted=trusted, settings=every):
        return DeliveryPlan(mode="env", env_settings=every, file_settings=(), ignored=())
    if privileged:
        return DeliveryPlan(
            mode="system-file",
            env_settings=tuple(s for s in every if s[0] in SECRET_SETTINGS),
            file_settings=tuple(s for s in every if s[0] not in SECRET_SETTINGS),
            ignored=(),
        )
    names = dict.fromkeys(name for name, _ in every if name not in SECRET_SETTINGS)
    ignored = tuple(name for name in names if name in DAEMON_SIDE_SETTINGS)
    return DeliveryPlan(mode="env-ignored", env_settings=every, file_settings=(), ignored=ignored)
