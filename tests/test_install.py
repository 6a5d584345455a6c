"""The README's "Installing the CLI" steps, as written: the hash-pinned lock, then the package
with --no-deps, into a fresh virtual environment; `nix-job` then runs a command. Needs the
package index (CI has it): pip downloads the locked wheels by hash, and flit_core to build."""

from __future__ import annotations

import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_steps() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Installing the CLI") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README: Installing the CLI has no sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_install_steps_give_a_working_nix_job(tmp_path: Path) -> None:
    steps = _readme_steps()
    assert "pip install --require-hashes --no-deps -r nix_job/runtime-lock.txt" in steps
    assert "pip install --no-deps ." in steps
    # A copy of the tracked files stands in for the clone.
    checkout = tmp_path / "nix-job"
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, checkout / rel)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    for step in (
        "pip install --require-hashes --no-deps -r nix_job/runtime-lock.txt",
        "pip install --no-deps .",
    ):
        args = step.split()[1:]
        done = subprocess.run(
            [*pip, *args], cwd=checkout, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"{step}:\n{done.stdout}\n{done.stderr}"
    nix_job = env_dir / "bin" / "nix-job"
    version = subprocess.run(
        [str(nix_job), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.startswith("nix-job ")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [
            str(nix_job),
            "run",
            "--attic-enabled",
            "false",
            "--nix-installer",
            "none",
            "--command",
            "echo installed-and-ran > out",
        ],
        cwd=work,
        env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "out").read_text() == "installed-and-ran\n"
    # The package imports its own copies, not the checkout's or the vendored tree.
    where = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import nix_job, httpx; print(nix_job.__file__, httpx.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(env_dir) in where
    assert "runtime/vendor" not in where
