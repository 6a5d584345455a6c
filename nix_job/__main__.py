"""Entry point: ``python -m nix_job`` (the action) or ``python -m nix_job push PATH...``.

The only module that reads ``os.environ``, installs signal handlers and chooses the exit code.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

from nix_job import run as job
from nix_job.command import Cancellation
from nix_job.core.errors import NixJobError
from nix_job.core.secret import Secret
from nix_job.frontends.github.commands import Workflow

ISSUES_URL = "https://github.com/nix-job/nix-job/issues"


def _read_payload(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def runtime_from_env(env: dict[str, str]) -> job.Runtime:
    token = env.get("ATTIC_TOKEN", "").strip()
    return job.Runtime(
        env=env,
        workspace=Path(env.get("GITHUB_WORKSPACE") or os.getcwd()),
        runner_temp=Path(env.get("RUNNER_TEMP") or tempfile.gettempdir()),
        event_payload=_read_payload(env.get("GITHUB_EVENT_PATH")),
        token=Secret(token) if token else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    if args[:1] == ["push"]:
        from nix_job.push import command as push_command  # noqa: PLC0415 - only this subcommand

        return push_command.main(args[1:], env)
    if args:
        print(
            f"nix-job: unknown arguments {args!r}; usage: python -m nix_job [push PATH...]",
            file=sys.stderr,
        )
        return 2
    wf = Workflow(env)
    cancellation = Cancellation()
    cancellation.install()
    try:
        return job.run(runtime_from_env(env), wf, cancellation)
    except NixJobError as error:  # raised before job.run could record it
        wf.annotate("error", f"{error.message} ({error.hint_url})", title=error.title)
        return 1
    except Exception:
        with wf.group("nix-job internal error (traceback)"):
            traceback.print_exc(file=sys.stdout)
        wf.annotate(
            "error",
            f"nix-job hit an unexpected error; please report it at {ISSUES_URL} "
            "with the traceback from the log.",
            title="nix-job: internal error",
        )
        return 1
    finally:
        cancellation.uninstall()


if __name__ == "__main__":
    sys.exit(main())
