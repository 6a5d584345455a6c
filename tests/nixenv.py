"""An isolated, offline, single-user Nix for tests, and unique throwaway derivations to build.

No nixpkgs: derivations use ``builtins.derivation`` with ``/bin/sh`` and host coreutils
(sandbox off). ``require_nix()`` skips without Nix, except in CI where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_job.core.nixhash import nix32_encode, to_attic_sha256

OFFLINE_SETTINGS = (
    "substituters =",
    "build-users-group =",
    "sandbox = false",
    "experimental-features = nix-command",
)
DEFAULT_TIMEOUT_S = 120.0


def nix_available() -> bool:
    """Whether ``nix``, ``nix-store`` and ``nix-build`` are on PATH."""
    return all(shutil.which(tool) for tool in ("nix", "nix-store", "nix-build"))


def require_nix() -> None:
    """Skip the calling test without Nix; in CI (``CI=true``) fail instead, so Nix tests can
    never be skipped silently where they are supposed to run."""
    if nix_available():
        return
    message = "nix, nix-store and nix-build must be on PATH for this test (install: nix-bin)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class NixEnv:
    """One test's Nix setup: own XDG dirs and HOME under ``root``, offline settings.

    ``env()`` gives the environment for subprocesses; ``run``/``build``/``dump`` use it.
    """

    root: Path
    extra_conf: tuple[str, ...] = ()
    remote: str | None = "local"
    """``NIX_REMOTE``; None leaves it unset (e.g. for a daemon)."""

    @classmethod
    def create(
        cls, root: Path, *, extra_conf: Iterable[str] = (), remote: str | None = "local"
    ) -> NixEnv:
        for sub in ("home", "xdg-cache", "xdg-config", "xdg-data", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return cls(root=root, extra_conf=tuple(extra_conf), remote=remote)

    def with_conf(self, *lines: str) -> NixEnv:
        """A copy with more nix.conf lines, e.g. ``trusted-public-keys = …``."""
        return NixEnv(root=self.root, extra_conf=self.extra_conf + lines, remote=self.remote)

    @property
    def nix_config(self) -> str:
        return "\n".join((*OFFLINE_SETTINGS, *self.extra_conf)) + "\n"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with Nix isolated and offline."""
        env = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if not k.startswith("NIX_") or k == "NIX_BIN_DIR"
        }
        env.update(
            HOME=str(self.root / "home"),
            XDG_CACHE_HOME=str(self.root / "xdg-cache"),
            XDG_CONFIG_HOME=str(self.root / "xdg-config"),
            XDG_DATA_HOME=str(self.root / "xdg-data"),
            TMPDIR=str(self.root / "tmp"),
            NIX_CONFIG=self.nix_config,
        )
        if self.remote is not None:
            env["NIX_REMOTE"] = self.remote
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a Nix command in this environment; with ``check``, fail with its stderr."""
        proc = subprocess.run(
            list(argv),
            env=self.env(),
            capture_output=True,
            input=stdin,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}:\n"
                f"{proc.stderr.decode(errors='replace')[-4000:]}"
            )
        return proc

    def text(self, argv: Sequence[str]) -> str:
        return self.run(argv).stdout.decode().strip()

    def build(self, expr: Path, *attrs: str, store: Path | None = None) -> list[str]:
        """``nix-build --no-out-link`` of ``attrs`` (all top-level ones if none); out paths in
        the order of ``attrs``."""
        argv = ["nix-build", "--no-out-link", str(expr)]
        if store is not None:
            argv += ["--store", str(store)]
        for attr in attrs:
            argv += ["-A", attr]
        return self.text(argv).split()

    def realise(self, *paths: str, store: Path | None = None, check: bool = True) -> list[str]:
        """``nix-store --realise`` (into ``store``, a chroot store directory, if given)."""
        argv = ["nix-store"]
        if store is not None:
            argv += ["--store", str(store)]
        proc = self.run([*argv, "--realise", *paths], check=check)
        return proc.stdout.decode().split()

    def dump(self, path: str) -> bytes:
        """The path's NAR, as ``nix-store --dump`` writes it."""
        return self.run(["nix-store", "--dump", path]).stdout

    def query(self, flag: str, path: str, *, store: Path | None = None) -> list[str]:
        """``nix-store -q <flag> <path>`` lines, e.g. ``--hash``, ``--size``, ``--references``."""
        argv = ["nix-store"]
        if store is not None:
            argv += ["--store", str(store)]
        return self.text([*argv, "-q", flag, path]).splitlines()

    def path_info_json(self, path: str) -> object:
        return json.loads(self.text(["nix", "path-info", "--json", path]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Derivations:
    """A written Nix file of unique derivations ``d0 … d{n-1}``."""

    file: Path
    tag: str
    attrs: tuple[str, ...]

    def out_paths(self, nix: NixEnv) -> dict[str, str]:
        """attr → output path, by evaluation only (nothing is built)."""
        expr = f"builtins.mapAttrs (n: d: d.outPath) (import {self.file})"
        argv = ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr]
        paths: dict[str, str] = json.loads(nix.text(argv))
        return paths

    def build(self, nix: NixEnv, *attrs: str) -> list[str]:
        """Build ``attrs`` (default: all, in order d0, d1, …); their output paths."""
        return nix.build(self.file, *(attrs or self.attrs))


def write_derivations(
    directory: Path,
    *,
    count: int = 1,
    chain: bool = False,
    sleep_s: float = 0.0,
    size: int = 0,
    fail: Iterable[int] = (),
    tag: str | None = None,
    prefix: str = "nixjob-test",
) -> Derivations:
    """Write ``<directory>/<tag>.nix`` with ``count`` derivations that nothing else has built.

    Each output is a directory holding the unique tag. ``chain``: ``d{i}`` depends on (and
    references at run time) ``d{i-1}``. ``sleep_s``: each build sleeps first. ``size``: each
    output also holds a ``blob`` of that many bytes. ``fail``: indexes whose build exits 1.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    tag = tag or uuid.uuid4().hex[:12]
    failing = set(fail)
    lines = [
        "let",
        "  mk = name: deps: script: builtins.derivation {",
        "    inherit name deps;",
        "    system = builtins.currentSystem;",
        '    builder = "/bin/sh";',
        '    args = [ "-c" script ];',
        '    PATH = "/usr/bin:/bin";',
        "  };",
        "in rec {",
    ]
    for i in range(count):
        steps = []
        if sleep_s > 0:
            steps.append(f"sleep {sleep_s}")
        if i in failing:
            steps.append(f"echo 'derivation {i} of {tag} fails on purpose' >&2; exit 1")
        steps += ["mkdir $out", f"echo {tag}-{i} > $out/id", 'echo "$deps" > $out/deps']
        if size > 0:
            steps.append(f"yes {tag}-{i} | head -c {size} > $out/blob")
        deps = f"[ d{i - 1} ]" if chain and i > 0 else "[ ]"
        script = "; ".join(steps)
        lines.append(f"  d{i} = mk \"{prefix}-{tag}-{i}\" {deps} ''{script}'';")
    lines.append("}")
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / f"{tag}.nix"
    file.write_text("\n".join(lines) + "\n")
    return Derivations(file=file, tag=tag, attrs=tuple(f"d{i}" for i in range(count)))


def hex_to_nix32(attic_hash: str) -> str:
    """``sha256:<hex>`` → ``sha256:<nix32>``, the form ``nix-store -q --hash`` prints."""
    normal = to_attic_sha256(attic_hash)
    return "sha256:" + nix32_encode(bytes.fromhex(normal[len("sha256:") :]))
