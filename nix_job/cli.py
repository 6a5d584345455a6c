"""``nix-job run``: the whole lifecycle around a command, under any CI or none.

    nix-job run [--INPUT VALUE ...] [--publish] [--summary-file FILE] [-- COMMAND ARG...]

Every input of the action is a flag (``--push-cache true``) and a ``NIX_JOB_<NAME>`` variable;
a flag wins over the variable, the variable over the default. Both come from the one input
table (``core.input_specs.INPUT_SPECS``). The command is ``--command 'SCRIPT'``,
``NIX_JOB_COMMAND``, or the words after ``--`` (quoted back into one bash line). Credentials are
never flags: ``ATTIC_TOKEN``, ``NIX_JOB_GITHUB_TOKEN``, GitLab's ``NIX_JOB_ID_TOKEN`` and GitHub's
``ACTIONS_ID_TOKEN_REQUEST_TOKEN`` come from the environment only.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from nix_job import frontends
from nix_job import run as lifecycle
from nix_job.args import USAGE_EXIT, Exit, Parser, UsageError
from nix_job.command import Cancellation
from nix_job.core.errors import NixJobError
from nix_job.core.input_specs import INPUT_SPECS
from nix_job.core.problem import Problem
from nix_job.core.secret import Secret
from nix_job.frontends.base import Frontend

ISSUES_URL = "https://github.com/nix-job/nix-job/issues"
USAGE = "usage: nix-job run [--INPUT VALUE ...] [--publish] [-- COMMAND ARG...]"
FLAG_SPECS = tuple(spec for spec in INPUT_SPECS if not spec.secret)


def parser() -> Parser:
    built = Parser(
        prog="nix-job run",
        description="Run a command with Nix and an Attic cache: bootstrap Nix, attach the cache "
        "for reads, decide whether this run may publish (GitHub's or GitLab's gate; elsewhere "
        "only with --publish), upload new store paths while the command runs, drain, and leave "
        "no trace. Every flag can also be given as NIX_JOB_<FLAG> in the environment.",
    )
    for spec in FLAG_SPECS:
        built.add_argument(
            f"--{spec.name}",
            dest=spec.field,
            metavar="VALUE",
            default=None,
            help=f"{spec.description} [{spec.env}; default: {spec.default or 'empty'}]",
        )
    built.add_argument(
        "--publish",
        action="store_true",
        help="outside GitHub Actions and GitLab CI only: this run may publish (nix-job applies "
        "no gate there; the caller's CI must have decided)",
    )
    built.add_argument(
        "--summary-file",
        type=Path,
        metavar="FILE",
        help="outside GitHub Actions and GitLab CI: write the Markdown summary here",
    )
    return built


def input_values(
    flags: Mapping[str, str | None], command: list[str], env: Mapping[str, str]
) -> dict[str, str]:
    """The raw input values keyed by ``NIX_JOB_*``: flags over the environment. Raises
    UsageError when the command is given twice."""
    values = {spec.env: env[spec.env] for spec in FLAG_SPECS if spec.env in env}
    for spec in FLAG_SPECS:
        given = flags.get(spec.field)
        if given is not None:
            values[spec.env] = given
    if command:
        if flags.get("command") is not None:
            raise UsageError("give the command either as --command or after --, not both")
        values["NIX_JOB_COMMAND"] = shlex.join(command)
    return values


def main(args: list[str], env: Mapping[str, str], secrets: Mapping[str, str]) -> int:
    """``nix-job run``; returns the exit code (the command's, unless nix-job failed)."""
    words = list(args)
    command: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1 :]
    try:
        parsed = parser().parse_args(words)
        values = input_values(vars(parsed), command, env)
        github_token = secrets.get("NIX_JOB_GITHUB_TOKEN", "").strip()
        frontend = frontends.select(
            env,
            github_token=Secret(github_token) if github_token else None,
            publish=parsed.publish,
            summary_file=parsed.summary_file,
            cwd=Path.cwd(),
            secrets=secrets,
        )
    except (UsageError, frontends.SelectionError) as error:
        print(f"nix-job run: {error}\n{USAGE}", file=sys.stderr)
        return USAGE_EXIT
    except Exit as done:
        return done.status
    token = secrets.get("ATTIC_TOKEN", "").strip()
    rt = lifecycle.Runtime(env=env, inputs=values, token=Secret(token) if token else None)
    return run(rt, frontend)


def run(rt: lifecycle.Runtime, frontend: Frontend) -> int:
    """The lifecycle with signal handling and a last line of defence for unexpected errors."""
    cancellation = Cancellation()
    cancellation.install()
    try:
        return lifecycle.run(rt, frontend, cancellation)
    except NixJobError as error:  # raised before the run could record it
        frontend.report(Problem.error(error.title, error.message, error.hint_url))
        return 1
    except Exception:
        with frontend.section("nix-job internal error (traceback)"):
            frontend.log(traceback.format_exc())
        frontend.report(
            Problem.error(
                "nix-job: internal error",
                f"nix-job hit an unexpected error; please report it at {ISSUES_URL} with the "
                "traceback from the log.",
            )
        )
        return 1
    finally:
        cancellation.uninstall()
