"""The names of the environment variables that carry credentials into nix-job. Pure.

Light on purpose: the entrypoint reads it before its secrets handoff re-executes the process,
when nothing else may be imported yet (``nix_job.__main__``).
"""

from __future__ import annotations

ATTIC_TOKEN_ENV = "ATTIC_TOKEN"  # noqa: S105 - the name of the variable, not a value
#: GitHub's ID-token request: the runner derives it from the job's system token
#: (actions/runner ScriptHandler.cs), so it can mint this job's OIDC tokens for any audience.
GITHUB_ID_TOKEN_REQUEST_TOKEN_ENV = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105
GITHUB_ID_TOKEN_REQUEST_URL_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"  # noqa: S105
#: The GitLab component declares the job's ID token under this name (``id_tokens:``).
GITLAB_ID_TOKEN_ENV = "NIX_JOB_ID_TOKEN"  # noqa: S105
#: The token-exchange service's signing keys (atticd's variables).
EXCHANGE_KEY_ENVS = (
    "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64",
    "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
)
