"""Entry point of ``nix-job`` (and ``python -m nix_job``, and the action's runtime/start.py).

    nix-job run [...]            the lifecycle around a command, under any CI (nix_job.cli)
    nix-job push PATH...         push store paths and their closures (nix_job.push.command)
    nix-job watch-store ...      upload new store paths as a service (nix_job.service)
    nix-job token-exchange ...   the OIDC token-exchange service (nix_job.exchange)
    nix-job runtime-lock         print the path of the hash-pinned runtime lock
    nix-job --version
    (no arguments)               the GitHub composite action: inputs from action.yml's NIX_JOB_*

The composition root and the only module that reads ``os.environ``. It takes the secrets out of
the process environment first (``handoff``, which starts the process again), then hands the rest
on. Everything else is imported after that, inside the function that needs it: the first process
only reads its environment and re-executes, so importing the lifecycle there (about 0.2 s of
module loading) would be paid twice at every start; and ``runtime-lock`` and ``--version`` must
work right after ``pip install --no-deps nix-job``, before the lock they name is installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from nix_job import __version__, handoff
from nix_job.core.input_specs import INPUT_SPECS
from nix_job.core.secret import Secret
from nix_job.core.secret_names import (
    ATTIC_TOKEN_ENV,
    EXCHANGE_KEY_ENVS,
    GITHUB_ID_TOKEN_REQUEST_TOKEN_ENV,
    GITLAB_ID_TOKEN_ENV,
)

USAGE = (
    "usage: nix-job {run|push|watch-store|token-exchange|runtime-lock|--version} ...  "
    "(see nix-job run --help)"
)

#: Environment variables that hold secrets: taken out of the process environment at start-up
#: (``handoff``), kept in memory, never passed on.
SECRET_ENVS = (
    ATTIC_TOKEN_ENV,
    *(spec.env for spec in INPUT_SPECS if spec.secret),
    # GitHub's ID-token request token is the job's system access token (actions/runner
    # ScriptHandler.cs), not only a way to ID tokens: the command never gets it from nix-job,
    # and /proc/<nix-job>/environ must not show it either. GitLab's ID token, likewise.
    GITHUB_ID_TOKEN_REQUEST_TOKEN_ENV,
    GITLAB_ID_TOKEN_ENV,
    *EXCHANGE_KEY_ENVS,
)


def _secret(values: Mapping[str, str], name: str) -> Secret | None:
    value = values.get(name, "").strip()
    return Secret(value) if value else None


def action(env: Mapping[str, str], secrets: Mapping[str, str]) -> int:
    """The GitHub composite action: every input arrives as ``NIX_JOB_*`` from action.yml."""
    from nix_job import cli  # noqa: PLC0415 - after the handoff (module docstring)
    from nix_job import run as lifecycle  # noqa: PLC0415
    from nix_job.frontends.github.frontend import GitHubFrontend  # noqa: PLC0415

    frontend = GitHubFrontend(
        env,
        github_token=_secret(secrets, "NIX_JOB_GITHUB_TOKEN"),
        id_token_request=_secret(secrets, GITHUB_ID_TOKEN_REQUEST_TOKEN_ENV),
    )
    rt = lifecycle.Runtime(
        env=env,
        inputs={spec.env: env[spec.env] for spec in INPUT_SPECS if spec.env in env},
        token=_secret(secrets, ATTIC_TOKEN_ENV),
    )
    return cli.run(rt, frontend)


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


def runtime_lock() -> str:
    """The hash-pinned lock of nix-job's runtime packages, shipped inside the package."""
    from importlib import resources  # noqa: PLC0415 - slow to import, needed by this only

    return str(resources.files("nix_job").joinpath("runtime-lock.txt"))


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
    command, rest = (args[0], args[1:]) if args else (None, [])
    if command is None:
        return action(env, secrets)
    if command == "run":
        from nix_job import cli  # noqa: PLC0415 - after the handoff (module docstring)

        return cli.main(rest, env, secrets)
    if command == "push":
        from nix_job.push import command as push_command  # noqa: PLC0415 - only this subcommand

        return push_command.main(rest, {**env, **secrets})
    if command == "watch-store":
        from nix_job.service import watch_store  # noqa: PLC0415 - only this subcommand

        return watch_store.main(rest, {**env, **secrets})
    if command == "token-exchange":
        from nix_job.exchange import service  # noqa: PLC0415 - an optional extra

        return service.main(rest, {**env, **secrets})
    if command == "runtime-lock":
        print(runtime_lock())
        return 0
    if command in ("--version", "version"):
        print(f"nix-job {__version__}")
        return 0
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    print(f"nix-job: unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
