"""Entry point: ``python -m nix_job`` (the action), ``push PATH...``, ``token-exchange``.

The composition root and the only module that reads ``os.environ``, installs signal handlers
and chooses the exit code. It takes the secrets out of the environment it hands on, picks the
front end, and builds the real adapters.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping

from nix_job import handoff
from nix_job import run as lifecycle
from nix_job.command import Cancellation
from nix_job.core.errors import NixJobError
from nix_job.core.inputs import INPUT_SPECS
from nix_job.core.problem import Problem
from nix_job.core.secret import Secret
from nix_job.frontends.base import Frontend
from nix_job.frontends.github.frontend import GitHubFrontend

ISSUES_URL = "https://github.com/nix-job/nix-job/issues"
USAGE = "usage: python -m nix_job [push PATH... | token-exchange --config FILE]"

#: Environment variables that hold secrets: taken out of the process environment at start-up
#: (``handoff``), kept in memory, never passed on.
ATTIC_TOKEN_ENV = "ATTIC_TOKEN"  # noqa: S105 - the name of the variable, not a value
SECRET_ENVS = (
    ATTIC_TOKEN_ENV,
    *(spec.env for spec in INPUT_SPECS if spec.secret),
    # The token-exchange service's signing keys (atticd's variables).
    "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64",
    "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
)


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value) if value else None


def action(env: Mapping[str, str], secrets: Mapping[str, str]) -> int:
    """The GitHub composite action: every input arrives as ``NIX_JOB_*`` from action.yml."""
    github_token = _secret(secrets, "NIX_JOB_GITHUB_TOKEN")
    frontend: Frontend = GitHubFrontend(env, github_token=github_token)
    rt = lifecycle.Runtime(
        env=env,
        inputs={spec.env: env[spec.env] for spec in INPUT_SPECS if spec.env in env},
        token=_secret(secrets, ATTIC_TOKEN_ENV),
    )
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


def _hide_secrets(env: dict[str, str]) -> dict[str, str]:
    """Take the secrets out of this process's environment (re-exec, see ``handoff``) and return
    them; ``env`` is left without them."""
    received = handoff.receive(env)
    if received is None:
        handoff.reexec(env, SECRET_ENVS)  # returns only when there is nothing to hide
        received = {}
    for name in SECRET_ENVS:
        env.pop(name, None)
    handoff.make_undumpable()
    return received


def main(argv: list[str] | None = None) -> int:
    """``argv`` None: the process entry (secrets are handed over first); a list: in-process."""
    args = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    secrets: dict[str, str] = {}
    if argv is None:
        try:
            secrets = _hide_secrets(env)
        except handoff.HandoffError as error:
            print(f"nix-job: {error}", file=sys.stderr)
            return 1
    else:
        secrets = {name: env.pop(name) for name in SECRET_ENVS if name in env}
    if args[:1] == ["push"]:
        from nix_job.push import command as push_command  # noqa: PLC0415 - only this subcommand

        return push_command.main(args[1:], {**env, **secrets})
    if args[:1] == ["token-exchange"]:
        from nix_job.exchange import service  # noqa: PLC0415 - an optional extra

        return service.main(args[1:], {**env, **secrets})
    if args:
        print(f"nix-job: unknown arguments {args!r}; {USAGE}", file=sys.stderr)
        return 2
    return action(env, secrets)


if __name__ == "__main__":
    sys.exit(main())
