"""runtime/vendor is exactly what the hash-pinned runtime lock contains (rebuilt and compared),
and nix-job imports its runtime packages from there, never from elsewhere."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "runtime" / "vendor"


def test_the_vendored_packages_are_rebuilt_byte_for_byte_from_the_lock() -> None:
    """Needs the package index (CI has it): pip downloads the locked wheels by hash."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "vendor.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_manifest_names_the_current_lock() -> None:
    lock = hashlib.sha256((ROOT / "requirements" / "runtime.txt").read_bytes()).hexdigest()
    assert f"# lock sha256 {lock}" in (VENDOR / "MANIFEST.txt").read_text()


def test_nothing_compiled_ships() -> None:
    compiled = [p for p in VENDOR.rglob("*") if p.suffix in (".so", ".pyd", ".dylib")]
    assert compiled == []


def test_start_imports_the_runtime_packages_from_the_vendored_tree(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(VENDOR)!r}]\n"
        "import httpx, jinja2, tenacity, inotify_simple, markupsafe\n"
        "from nix_job.core import summary\n"
        "for m in (httpx, jinja2, tenacity, inotify_simple, markupsafe):\n"
        "    print(m.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    files = done.stdout.split()
    assert len(files) == 5
    assert all(Path(f).is_relative_to(VENDOR) for f in files), files
