"""Figure 4: start-up overhead of the real entrypoint, and the action's Python environment.

``python -m nix_job`` runs with a command that prints ``date +%s.%N``; the figure is that
timestamp minus the spawn time. ``runtime/venv.sh`` is timed cold (fresh tool cache) and warm.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, DoubleProcess, Figure, Profile, Workspace, at_most, stats

_STAMP = re.compile(r"^(\d{9,}\.\d+)$", re.MULTILINE)
DEFAULT_BRANCH = "main"


def _venv_sh(ws: Workspace, tool_cache: Path) -> tuple[float, str]:
    """Run runtime/venv.sh as action.yml does; (seconds, the venv's python)."""
    output = ws.dir / "venv-output"
    output.write_text("")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": ws.env["HOME"],
        "NIX_JOB_INTERNAL_BASE_PYTHON": "python3",
        "GITHUB_ACTION_PATH": str(ROOT),
        "RUNNER_TOOL_CACHE": str(tool_cache),
        "RUNNER_TEMP": str(ws.dir / "tmp"),
        "GITHUB_OUTPUT": str(output),
    }
    started = time.perf_counter()
    done = subprocess.run(
        ["bash", str(ROOT / "runtime" / "venv.sh")],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"runtime/venv.sh failed:\n{done.stderr.decode(errors='replace')}")
    found = re.search(r"^python=(.+)$", output.read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError("runtime/venv.sh wrote no python= output")
    return seconds, found.group(1)


def _entrypoint_env(
    ws: Workspace, run_dir: Path, url: str, cache: str, token: str
) -> dict[str, str]:
    """A trusted default-branch push run with publishing on, as the runner would set it up."""
    run_dir.mkdir(parents=True, exist_ok=True)
    event = run_dir / "event.json"
    event.write_text(
        json.dumps(
            {
                "ref": f"refs/heads/{DEFAULT_BRANCH}",
                "repository": {"full_name": "acme/app", "default_branch": DEFAULT_BRANCH},
            }
        )
    )
    files = {}
    for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY"):
        path = run_dir / name.lower()
        path.write_text("")
        files[name] = str(path)
    (run_dir / "workspace").mkdir(exist_ok=True)
    (run_dir / "temp").mkdir(exist_ok=True)
    return {
        **ws.env,
        **files,
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_REF": f"refs/heads/{DEFAULT_BRANCH}",
        "GITHUB_REPOSITORY": "acme/app",
        "GITHUB_WORKSPACE": str(run_dir / "workspace"),
        "RUNNER_TEMP": str(run_dir / "temp"),
        "ATTIC_TOKEN": token,
        "NIX_JOB_COMMAND": "date +%s.%N",
        "NIX_JOB_WORKING_DIRECTORY": ".",
        "NIX_JOB_ATTIC_ENABLED": "true",
        "NIX_JOB_ATTIC_SERVER": url,
        "NIX_JOB_ATTIC_CACHE": cache,
        "NIX_JOB_PUSH_CACHE": "true",
        "NIX_JOB_GITHUB_TOKEN": "",
    }


def startup(ws: Workspace, profile: Profile) -> tuple[Figure, dict[str, object]]:
    """The start-up figure, and the Python environment timings (no target)."""
    env_info: dict[str, object] = {}
    python = PYTHON
    if profile.cold_venv_repeats:
        cold: list[float] = []
        for i in range(profile.cold_venv_repeats):
            seconds, python = _venv_sh(ws, ws.dir / f"toolcache-{i}")
            cold.append(seconds)
        warm, _ = _venv_sh(ws, ws.dir / "toolcache-0")
        env_info = {
            "cold_venv_s": stats(cold).to_json(),
            "warm_venv_reuse_s": warm,
        }
    samples: list[float] = []
    totals: list[float] = []
    with DoubleProcess(ws.dir) as double:
        for i in range(profile.startup_repeats):
            env = _entrypoint_env(
                ws, ws.dir / f"startup-{i}", double.url, double.cache, double.token
            )
            spawned = time.time()
            started = time.perf_counter()
            done = subprocess.run(
                [python, "-m", "nix_job"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
            totals.append(time.perf_counter() - started)
            out = done.stdout.decode(errors="replace")
            stamp = _STAMP.search(out)
            if done.returncode != 0 or stamp is None:
                raise RuntimeError(
                    f"start-up benchmark: python -m nix_job exited {done.returncode} without the "
                    f"command's timestamp:\n{out[-3000:]}\n{done.stderr.decode(errors='replace')}"
                )
            samples.append(float(stamp.group(1)) - spawned)
    figure = at_most(
        "startup_s",
        "Start-up: `python -m nix_job` spawned → the command starts (Nix present, venv cached)",
        "s",
        stats(samples),
        0.6,
        python=python,
        whole_run_s=stats(totals).to_json(),
        **env_info,
    )
    return figure, env_info
