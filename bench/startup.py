"""Start-up: spawned → the command's first instruction, cold (a fresh copy of the action, as
an ephemeral runner downloads it: no byte-code, an empty tool cache, no package index
reachable) and warm (the same copy again).

Each run is the action's own steps: ``runtime/find-python.sh``, then ``python -I
runtime/start.py`` with a command that prints ``date +%s.%N``; the figure is that timestamp
minus the time the first step was spawned.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, DoubleProcess, Figure, Profile, Workspace, at_most, stats

_STAMP = re.compile(r"^(\d{9,}\.\d+)$", re.MULTILINE)
DEFAULT_BRANCH = "main"
#: Where any attempt to reach a package index goes: nowhere (port 9 is discard, closed here).
UNREACHABLE = "http://127.0.0.1:9"
RUNNER_PATH = (
    "/nix/var/nix/profiles/default/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)


def _action_copy(ws: Workspace, name: str) -> Path:
    """The action's tracked files, copied as a runner unpacks the action: no __pycache__."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "action.yml", "runtime", "nix_job"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    target = ws.dir / name
    for rel in filter(None, listed.split("\0")):
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    return target


def _entrypoint_env(
    ws: Workspace, run_dir: Path, *, url: str, cache: str, token: str
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


def _start_once(ws: Workspace, action: Path, run_dir: Path, double_env: dict[str, str]) -> float:
    """One start of the action from ``action``: spawn of find-python.sh → the command's stamp."""
    env = {
        **_entrypoint_env(ws, run_dir, **double_env),
        "GITHUB_ACTION_PATH": str(action),
        # A runner's PATH: no version-manager shims (pyenv's put a shell script in front of
        # every Python start), Nix from its package or profile.
        "PATH": RUNNER_PATH,
    }
    # No package index: nothing at start-up may need one (pip, a venv, a download).
    env.update(
        PIP_INDEX_URL=UNREACHABLE,
        PIP_NO_INDEX="1",
        HTTP_PROXY=UNREACHABLE,
        HTTPS_PROXY=UNREACHABLE,
        NO_PROXY="127.0.0.1,localhost",  # the Attic double only
        RUNNER_TOOL_CACHE=str(run_dir / "toolcache"),
    )
    (run_dir / "toolcache").mkdir(exist_ok=True)
    output = run_dir / "find-python-output"
    output.write_text("")
    spawned = time.time()
    found = subprocess.run(
        ["bash", str(action / "runtime" / "find-python.sh")],
        env={**env, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    python = re.search(r"^python=(.+)$", output.read_text(), re.MULTILINE)
    if found.returncode != 0 or python is None:
        raise RuntimeError(f"find-python.sh found no Python: {found.stdout!r} {found.stderr!r}")
    done = subprocess.run(
        [python.group(1), "-I", str(action / "runtime" / "start.py")],
        cwd=run_dir / "workspace",
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    out = done.stdout.decode(errors="replace")
    stamp = _STAMP.search(out)
    if done.returncode != 0 or stamp is None:
        raise RuntimeError(
            f"start-up benchmark: runtime/start.py exited {done.returncode} without the "
            f"command's timestamp:\n{out[-3000:]}\n{done.stderr.decode(errors='replace')}"
        )
    return float(stamp.group(1)) - spawned


def startup(ws: Workspace, profile: Profile) -> list[Figure]:
    """Cold start, warm start and their ratio, measured alternately on fresh copies."""
    cold: list[float] = []
    warm: list[float] = []
    ratios: list[float] = []
    with DoubleProcess(ws.dir) as double:
        double_env = {"url": double.url, "cache": double.cache, "token": double.token}
        for i in range(profile.startup_repeats):
            action = _action_copy(ws, f"action-{i}")
            first = _start_once(ws, action, ws.dir / f"start-cold-{i}", double_env)
            again = _start_once(ws, action, ws.dir / f"start-warm-{i}", double_env)
            cold.append(first)
            warm.append(again)
            ratios.append(first / again)
            shutil.rmtree(action, ignore_errors=True)
    details = {"cold_s": stats(cold).to_json(), "warm_s": stats(warm).to_json()}
    return [
        at_most(
            "cold_start_s",
            "Cold start: the action's steps spawned → the command's first instruction (fresh "
            "copy, empty tool cache, no package index)",
            "s",
            stats(cold),
            1.5,
            **details,
        ),
        at_most(
            "cold_vs_warm_start",
            "Cold start / warm start (the same copy started again)",
            "ratio",
            stats(ratios),
            5,
            **details,
        ),
        at_most(
            "warm_start_s",
            "Warm start: the action's steps spawned → the command's first instruction",
            "s",
            stats(warm),
            0.6,
            **details,
        ),
    ]
