"""./scripts/demo: nix-job end to end on this machine, with a local Attic-compatible server.

1. Start the Attic server double on 127.0.0.1 with a private cache.
2. Run action.yml through the composite-action harness as a push to the default branch with
   push-cache: true: it builds demo/demo.nix and publishes each path while the build runs.
3. Forget the built paths locally (a fresh runner would not have them).
4. Run it again as a pull request, with the same push token and push-cache: true: it stays
   read-only (zero write requests) and substitutes what the first run published.
5. The same pair on GitLab: the component (templates/nix-job.yml) in a scratch project under
   gitlab-ci-local, once as a push pipeline of the protected default branch (publishes while
   building) and once as a merge request pipeline with the same token (read-only, substitutes
   what the push published). Skipped, with a note, where gitlab-ci-local is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import yaml

from tests.actionrun import host_env, run_nix_job
from tests.attic_double import AtticDouble
from tests.gitlab.local import LocalProject, PipelineResult, missing_tools
from tests.harness import ActionResult

ROOT = Path(__file__).resolve().parent.parent
CACHE = "demo"
OFFLINE = (
    "substituters =\nbuild-users-group =\nsandbox = false\nexperimental-features = nix-command"
)


def say(text: str = "") -> None:
    print(text, flush=True)


def nix_env(home: Path) -> dict[str, str]:
    for sub in ("xdg-cache", "xdg-config", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return host_env(
        nix_config=OFFLINE,
        HOME=str(home),
        XDG_CACHE_HOME=str(home / "xdg-cache"),
        XDG_CONFIG_HOME=str(home / "xdg-config"),
        TMPDIR=str(home / "tmp"),
        NIX_REMOTE="local",
    )


def run(
    label: str,
    *,
    event: str,
    workspace: Path,
    tool_cache: Path,
    env: dict[str, str],
    server: AtticDouble,
    token: str,
    command: str,
) -> ActionResult:
    workspace.mkdir(parents=True, exist_ok=True)
    say(f"--- {label} ---")
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={
            "command": command,
            "attic-server": server.url,
            "attic-cache": CACHE,
            "push-cache": "true",
        },
        event=event,
        env={"ATTIC_TOKEN": token},
        process_env=env,
        secrets=(token,),
    )
    outputs = result.outputs
    say(f"exit code       {result.exit_code}")
    say(f"published?      {outputs.get('cache-push')}: {outputs.get('cache-push-reason')}")
    say(
        f"paths pushed    {outputs.get('paths-pushed')} (failed or left over: "
        f"{outputs.get('paths-failed')})"
    )
    say(
        f"bootstrap       {float(outputs.get('bootstrap-seconds') or 0):.2f} s, "
        f"command {float(outputs.get('command-seconds') or 0):.2f} s"
    )
    if result.exit_code != 0:
        say(result.output[-4000:])
        raise SystemExit(f"demo: the {label} run failed")
    if result.leaks(token):
        raise SystemExit("demo: the token leaked into the log or a workflow file")
    return result


def forget(paths: list[str], env: dict[str, str], *workspaces: Path) -> None:
    """Delete ``paths`` from the local store, as a fresh runner would not have them."""
    for workspace in workspaces:
        for link in workspace.glob("result*"):
            link.unlink()
    subprocess.run(["nix-store", "--delete", *paths], env=env, check=True, capture_output=True)


def closure(result: Path, env: dict[str, str]) -> frozenset[str]:
    """The store paths the demo built: the outputs of the build-time closure of its ``result``
    link (demo-app keeps no run-time reference to the steps it was built from). On a machine
    whose store other jobs share, a publishing run uploads their new paths too; the demo shows
    and forgets only its own."""

    def query(*args: str) -> list[str]:
        done = subprocess.run(
            ["nix-store", "--query", *args], env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.split()

    (deriver,) = query("--deriver", str(result))
    paths = query("--requisites", "--include-outputs", deriver)
    return frozenset(p for p in paths if not p.endswith(".drv"))


def show_uploads(server: AtticDouble, build_ended: float, paths: frozenset[str]) -> list[str]:
    """Print when each of ``paths`` reached the cache, relative to the end of the build;
    return those that did."""
    objects = sorted(
        (o for o in server.objects(CACHE) if o.store_path in paths),
        key=lambda o: o.stored_at,
    )
    say(f"in the cache    {len(objects)} path(s), uploaded relative to the end of the build:")
    for obj in objects:
        lead = build_ended - obj.stored_at
        when = f"{lead:.1f} s before" if lead > 0 else f"{-lead:.1f} s after"
        say(f"                {when:>14}  {obj.store_path}")
    during = sum(1 for o in objects if o.stored_at < build_ended)
    say(f"                {during} of {len(objects)} published while the build was running")
    return [o.store_path for o in objects]


# The GitLab part: the component, included locally, in a scratch project. nix-job runs from this
# checkout (runtime/start.py) through the component's `source: ""` (a nix-job on PATH), so the
# demo needs no package index; tests/gitlab also runs the component's pip install.
GITLAB_JOB = "nix-job"
PROTECTED_PUSH = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_COMMIT_REF_PROTECTED": "true",
}
MERGE_REQUEST = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_MERGE_REQUEST_IID": "7",
    "CI_MERGE_REQUEST_EVENT_TYPE": "merged_result",
    "CI_COMMIT_REF_NAME": "feature",
}


def gitlab_pipeline(
    label: str,
    project: LocalProject,
    *,
    variables: dict[str, str],
    unset: tuple[str, ...] = (),
    env: dict[str, str],
    token: str,
) -> PipelineResult:
    say(f"--- {label} ---")
    result = project.run(variables={**variables, "ATTIC_TOKEN": token}, unset=unset, env=env)
    job = result.job(GITLAB_JOB)
    report = dict(
        line.split("=", 1) for line in job.dotenv("nix-job.env").splitlines() if "=" in line
    )
    say(f"job             {job.status} (exit code {job.exit_code})")
    say(
        f"published?      {report.get('NIX_JOB_CACHE_PUSH')}: "
        f"{report.get('NIX_JOB_CACHE_PUSH_REASON')}"
    )
    say(
        f"paths pushed    {report.get('NIX_JOB_PATHS_PUSHED')} (failed or left over: "
        f"{report.get('NIX_JOB_PATHS_FAILED')})"
    )
    if job.status != "passed":
        say(result.output[-4000:])
        raise SystemExit(f"demo: the {label} pipeline failed")
    if token in result.output or token in job.log:
        raise SystemExit("demo: the token leaked into a GitLab job log")
    return result


def gitlab(base: Path, server: AtticDouble, token: str, env: dict[str, str], salt: str) -> None:
    missing = missing_tools()
    if missing:
        say(f"GitLab part skipped: it needs {', '.join(missing)} (./scripts/setup installs them)")
        return
    say("=== GitLab CI: the component under gitlab-ci-local ===")
    shim_dir = base / "shim"
    shim_dir.mkdir()
    shim = shim_dir / "nix-job"
    start = ROOT / "runtime" / "start.py"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I "{start}" "$@"\n')
    shim.chmod(0o755)
    marks = base / "gitlab-marks"
    marks.mkdir()
    command = (
        f"nix-build {base / 'demo.nix'} --argstr salt gitlab-{salt}\n"
        f"date +%s.%N > {marks / 'built'}"
    )
    ci_yml = yaml.safe_dump(
        {
            "include": [
                {
                    "local": "templates/nix-job.yml",
                    # image "": gitlab-ci-local runs the job in its shell executor here.
                    "inputs": {"image": "", "source": "", "command": command, "push-cache": True},
                }
            ]
        },
        sort_keys=False,
        width=1000,
    )
    project = LocalProject.create(
        base / "gitlab",
        ci_yml=ci_yml,
        files={"templates/nix-job.yml": (ROOT / "templates" / "nix-job.yml").read_text()},
    )
    # The runner's environment: Nix, the cache (as runner pods export it), nix-job on PATH.
    runner = {
        **env,
        "PATH": f"{shim_dir}{os.pathsep}{env['PATH']}",
        "ATTIC_SERVER": server.url,
        "ATTIC_CACHE": CACHE,
    }
    say(f"include: local templates/nix-job.yml; command: {command}")
    say()

    server.clear_requests()
    gitlab_pipeline(
        "push pipeline of the protected default branch (publishes)",
        project,
        variables=PROTECTED_PUSH,
        env=runner,
        token=token,
    )
    workspace = project.root / ".gitlab-ci-local" / "builds" / GITLAB_JOB
    built = closure(workspace / "result", env)
    published = show_uploads(server, float((marks / "built").read_text()), built)
    say()

    forget(published, env, workspace)
    say("forgot the built paths locally, as a fresh runner would not have them")
    server.clear_requests()
    say()

    mr = gitlab_pipeline(
        "merge request pipeline (same token, push-cache: true, stays read-only)",
        project,
        variables=MERGE_REQUEST,
        unset=("CI_COMMIT_BRANCH",),
        env=runner,
        token=token,
    )
    copied = [line for line in mr.job(GITLAB_JOB).log.splitlines() if "copying path" in line]
    writes = server.write_requests()
    say(f"write requests  {len(writes)}")
    say(f"substituted     {len(copied)} path(s) from the cache instead of building them")
    say()
    if writes or not copied:
        raise SystemExit("demo: the merge request pipeline did not behave as expected")


def main() -> int:
    if not shutil.which("nix-build"):
        raise SystemExit("demo: nix-build not found; run ./scripts/setup first")
    salt = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="nix-job-demo-") as tmp, AtticDouble() as server:
        base = Path(tmp)
        server.create_cache(CACHE)
        push_token = server.make_token({CACHE: "rw"}, sub="demo-ci")
        shutil.copy(ROOT / "demo" / "demo.nix", base / "demo.nix")
        command = f"nix-build {base / 'demo.nix'} --argstr salt {salt}\ndate +%s.%N > .built"
        env = nix_env(base / "home")
        tool_cache = base / "toolcache"
        say(f"Attic server double on {server.url}, private cache `{CACHE}`")
        say(f"command: {command}")
        say()

        run(
            "push to main (trusted, publishes)",
            event="push",
            workspace=base / "push",
            tool_cache=tool_cache,
            env=env,
            server=server,
            token=push_token,
            command=command,
        )
        build_ended = float((base / "push" / ".built").read_text())
        built = show_uploads(server, build_ended, closure(base / "push" / "result", env))
        say()

        forget(built, env, base / "push")
        say("forgot the built paths locally, as a fresh runner would not have them")
        server.clear_requests()
        say()

        pr = run(
            "pull request (same token, push-cache: true, stays read-only)",
            event="pull_request",
            workspace=base / "pr",
            tool_cache=tool_cache,
            env=env,
            server=server,
            token=push_token,
            command=command,
        )
        copied = [line for line in pr.raw_output.splitlines() if line.startswith("copying path")]
        writes = server.write_requests()
        say(f"write requests  {len(writes)}")
        say(f"substituted     {len(copied)} path(s) from the cache instead of building them")
        say()
        if writes or not copied:
            raise SystemExit("demo: the pull-request run did not behave as expected")

        gitlab(base, server, push_token, env, salt)
        say("demo: OK")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
