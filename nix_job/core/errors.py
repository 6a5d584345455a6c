"""The exception tree of nix-job. Every error owns its message: what failed, why, what to do.

    NixJobError                  base; ``title`` (annotation title), ``message``, ``hint`` anchor
    ├── InputError               every bad input at once (``problems``)
    ├── NixInstallError          finding, downloading, verifying or running a Nix installer
    ├── NixConfigError           reading or writing nix.conf, restarting a daemon
    ├── StoreError               a Nix store query or NAR dump failed
    ├── CacheConfigError         the read path cannot be set up safely (e.g. a pinned key differs)
    ├── IdTokenError             the CI gave no OIDC ID token for the token exchange
    └── AtticError               talking to the Attic server (``status`` may be None)
        ├── AtticAuthError       401 / 403: token missing, wrong, expired, or lacks a permission
        └── AtticApiError        any other structured or unstructured API error

The user's command failing is *not* an exception: its exit code becomes the action's.
"""

from __future__ import annotations

DOCS_URL = "https://github.com/nix-job/nix-job#"


class NixJobError(Exception):
    """Base class. ``hint`` is a README anchor under Troubleshooting."""

    title = "nix-job failed"
    hint = "troubleshooting"

    def __init__(self, message: str, *, title: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if title is not None:
            self.title = title
        if hint is not None:
            self.hint = hint

    @property
    def hint_url(self) -> str:
        return DOCS_URL + self.hint


class InputError(NixJobError):
    title = "nix-job: invalid inputs"
    hint = "inputs"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"- {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} input problem(s); nothing was run:\n{lines}\n"
            "Fix them (the action's `with:` values, the GitLab component's inputs, or the flags "
            "and NIX_JOB_* variables of `nix-job run`; see the inputs table in the README)."
        )


class NixInstallError(NixJobError):
    title = "nix-job: Nix bootstrap failed"
    hint = "nix-bootstrap-fails"


class NixConfigError(NixJobError):
    title = "nix-job: Nix configuration failed"
    hint = "nix-configuration-fails"


class StoreError(NixJobError):
    title = "nix-job: Nix store query failed"
    hint = "store-errors"


class CacheConfigError(NixJobError):
    title = "nix-job: cache configuration refused"
    hint = "wrong-public-key"


class IdTokenError(NixJobError):
    """No OIDC ID token: ``expected`` when the CI never gives one to this kind of run (a fork's
    pull request), which is worth a notice rather than a warning."""

    title = "nix-job: no OIDC ID token"
    hint = "token-exchange-fails"

    def __init__(self, message: str, *, expected: bool = False) -> None:
        super().__init__(message)
        self.expected = expected


class AtticError(NixJobError):
    title = "nix-job: Attic request failed"
    hint = "attic-errors"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        title: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, title=title, hint=hint)
        self.status = status
        self.error = error


class AtticAuthError(AtticError):
    title = "nix-job: Attic refused the token"
    hint = "401-or-403-from-attic"


class AtticApiError(AtticError):
    pass
