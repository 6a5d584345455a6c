"""./scripts/demo: nix-job end to end on this machine, with a local Attic-compatible server.

1. Start the Attic server double on 127.0.0.1 with a private cache.
2. Run action.yml through the composite-action harness as a push to the default branch with
   push-cache: true: it builds demo/demo.nix and publishes each path while the build runs.
3. Forget the built paths locally (a fresh runner would not have them).
4. Run it again as a pull request, with the same push token and push-cache: true: it stays
   read-only (zero write requests) and substitutes what the first run published.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tests.actionrun import host_env, run_nix_job
from tests.attic_double import AtticDouble
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
        objects = sorted(server.objects(CACHE), key=lambda o: o.stored_at)
        built = [o.store_path for o in objects]
        build_ended = float((base / "push" / ".built").read_text())
        say(f"in the cache    {len(built)} path(s), uploaded relative to the end of the build:")
        for obj in objects:
            lead = build_ended - obj.stored_at
            when = f"{lead:.1f} s before" if lead > 0 else f"{-lead:.1f} s after"
            say(f"                {when:>14}  {obj.store_path}")
        during = sum(1 for o in objects if o.stored_at < build_ended)
        say(f"                {during} of {len(objects)} published while the build was running")
        say()

        for link in (base / "push").glob("result*"):
            link.unlink()
        subprocess.run(["nix-store", "--delete", *built], env=env, check=True, capture_output=True)
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
        say("demo: OK")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
