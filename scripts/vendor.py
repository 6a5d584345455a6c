"""Build ``runtime/vendor/`` from the hash-pinned runtime lock, or check that it matches.

The action runs nix-job with these pure-Python packages on its path instead of installing them
with pip on every cold runner (seconds per job, and impossible without a package index). The
tree is what the locked wheels contain, minus compiled files (markupsafe's optional C speedups;
it falls back to its pure-Python ``_native`` module) and the wheels' RECORD files, plus a
``MANIFEST.txt`` naming the lock it came from and every file's SHA-256. Nothing else: so
``--check`` in CI can rebuild it from the lock and require the committed tree to be identical.

    ./scripts/vendor          rebuild runtime/vendor from requirements/runtime.txt
    ./scripts/vendor --check  exit 1 (listing the differences) unless they match
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "runtime.txt"
DEST = ROOT / "runtime" / "vendor"
MANIFEST = "MANIFEST.txt"
# Files of a wheel that are not kept: compiled code (the tree is for every platform) and
# install bookkeeping that names files which are not kept.
DROPPED_SUFFIXES = (".so", ".pyd", ".dylib", ".c", ".h")
DROPPED_NAMES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
# Any platform works for pure-Python wheels; markupsafe's compiled wheel needs one to be named.
PLATFORM = ("--platform", "manylinux2014_x86_64", "--python-version", "3.11")


def download(wheels: Path) -> list[Path]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--require-hashes",
            "--no-deps",
            "--only-binary=:all:",
            *PLATFORM,
            "--implementation",
            "cp",
            "--dest",
            str(wheels),
            "-r",
            str(LOCK),
        ],
        check=True,
    )
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"vendor: pip downloaded no wheels from {LOCK}")
    return found


def kept(name: str) -> bool:
    path = PurePosixPath(name)
    return not (
        name.endswith("/")
        or path.suffix in DROPPED_SUFFIXES
        or path.name in DROPPED_NAMES
        or "__pycache__" in path.parts
    )


def extract(wheel: Path, tree: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if not kept(member):
                continue
            target = tree / member
            if not target.resolve().is_relative_to(tree.resolve()):
                raise SystemExit(f"vendor: {wheel.name} has a path outside the tree: {member}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
            target.chmod(0o644)


def manifest(tree: Path) -> str:
    lock = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    lines = [
        "# runtime/vendor: the packages of requirements/runtime.txt, built by ./scripts/vendor",
        f"# lock sha256 {lock}",
    ]
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(tree).as_posix()}")
    return "\n".join(lines) + "\n"


def build(tree: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="nix-job-wheels-") as wheels:
        for wheel in download(Path(wheels)):
            extract(wheel, tree)
    (tree / MANIFEST).write_text(manifest(tree))


def files(tree: Path) -> dict[str, bytes]:
    return {
        p.relative_to(tree).as_posix(): p.read_bytes()
        for p in tree.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nix-job-vendor-") as scratch:
        tree = Path(scratch) / "vendor"
        tree.mkdir()
        build(tree)
        if args.check:
            want, have = files(tree), files(DEST) if DEST.is_dir() else {}
            differ = sorted(
                {name for name in want.keys() | have.keys() if want.get(name) != have.get(name)}
            )
            if differ:
                print(f"vendor: runtime/vendor differs from {LOCK.name} in {len(differ)} file(s):")
                for name in differ[:40]:
                    state = (
                        "missing"
                        if name not in have
                        else "extra"
                        if name not in want
                        else "changed"
                    )
                    print(f"  {state}: {name}")
                print("Run ./scripts/vendor and commit runtime/vendor.")
                return 1
            print(f"vendor: runtime/vendor matches {LOCK.name} ({len(want)} files)")
            return 0
        shutil.rmtree(DEST, ignore_errors=True)
        shutil.copytree(tree, DEST)
        print(f"vendor: wrote {DEST.relative_to(ROOT)} ({len(files(DEST))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
