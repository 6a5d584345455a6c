"""Front ends, one per CI, behind ``base.Frontend``; ``select`` picks one from the environment:
each CI's front end recognises its own marker variable (``github.frontend.detects``,
``gitlab.frontend.detects``); anything else gets the generic front end (no gate of its own: it
publishes only with ``--publish``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nix_job.core.secret import Secret
from nix_job.frontends import generic
from nix_job.frontends.base import Frontend
from nix_job.frontends.github import frontend as github
from nix_job.frontends.github import oidc
from nix_job.frontends.gitlab import frontend as gitlab


class SelectionError(ValueError):
    """An option that does not fit the CI nix-job runs under; the message says which."""


def select(
    env: Mapping[str, str],
    *,
    github_token: Secret | None,
    publish: bool,
    summary_file: Path | None,
    cwd: Path,
    secrets: Mapping[str, str] | None = None,
) -> Frontend:
    """The front end of the CI this process runs under. ``secrets``: the credentials the
    entrypoint took out of the environment; each front end takes its CI's ID-token credential."""
    secrets = secrets or {}

    def secret(name: str) -> Secret | None:
        value = secrets.get(name, "").strip()
        return Secret(value) if value else None

    outside = "applies only outside GitHub Actions and GitLab CI"
    if github.detects(env) or gitlab.detects(env):
        ci = "GitHub Actions" if github.detects(env) else "GitLab CI"
        if publish:
            raise SelectionError(f"--publish {outside}; under {ci} the CI's own gate decides")
        if summary_file is not None:
            raise SelectionError(f"--summary-file {outside}; {ci} gets the summary its own way")
    if github.detects(env):
        return github.GitHubFrontend(
            env,
            github_token=github_token,
            cwd=cwd,
            id_token_request=secret(oidc.REQUEST_TOKEN_ENV),
        )
    if gitlab.detects(env):
        return gitlab.GitLabFrontend(env, cwd=cwd, id_token=secret(gitlab.ID_TOKEN_ENV))
    return generic.GenericFrontend(
        publish=publish, cwd=cwd, run_id=f"local-{os.getpid()}", summary_file=summary_file
    )
