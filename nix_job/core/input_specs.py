"""The one table of nix-job's inputs (``INPUT_SPECS``): name, default, group, description, and
whether it is a credential. Pure.

Every front end derives its inputs from it: action.yml's inputs and ``NIX_JOB_*`` step variables,
``nix-job run``'s flags, the GitLab component's inputs; the contract test keeps them, and the
README's tables, in sync. ``nix_job.core.inputs`` parses the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["Run", "Cache", "Publishing", "Nix", "Advanced"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    name: str
    default: str
    group: Group
    description: str
    # A credential: read by the entrypoint as a secret (never a field of ``Inputs``, never
    # printed), and removed from the process environment before anything else runs.
    secret: bool = False

    @property
    def env(self) -> str:
        return "NIX_JOB_" + self.name.upper().replace("-", "_")

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


INPUT_SPECS: tuple[InputSpec, ...] = (
    InputSpec(
        name="command",
        default="nix build .#default",
        group="Run",
        description="Bash script to run (`bash -eo pipefail`). Its exit code is nix-job's.",
    ),
    InputSpec(
        name="working-directory",
        default=".",
        group="Run",
        description="Directory to run the command in, relative to the workspace "
        "(the repository checkout).",
    ),
    InputSpec(
        name="attic-enabled",
        default="true",
        group="Cache",
        description="`false` is the raw-Nix opt-out: Nix only, no cache attached or touched.",
    ),
    InputSpec(
        name="attic-server",
        default="",
        group="Cache",
        description="Attic server URL, e.g. `https://cache.example.com/`. "
        "Overrides the runner hint `ATTIC_SERVER`.",
    ),
    InputSpec(
        name="attic-cache",
        default="",
        group="Cache",
        description="Attic cache name. Overrides the runner hint `ATTIC_CACHE`.",
    ),
    InputSpec(
        name="attic-public-key",
        default="",
        group="Cache",
        description="Pin the cache's signing key (`name:base64`). "
        "Empty: discovered from the server. A pinned key the server contradicts is an error.",
    ),
    InputSpec(
        name="attic-token-exchange",
        default="",
        group="Cache",
        description="URL of a token exchange (`nix-job token-exchange`) that trades this job's "
        "OIDC ID token for a short-lived Attic token, replacing `ATTIC_TOKEN`. https:// (http:// "
        "only for loopback). GitHub needs `permissions: id-token: write`; GitLab, `id_tokens:` "
        "`NIX_JOB_ID_TOKEN`. Empty: off.",
    ),
    InputSpec(
        name="oidc-audience",
        default="",
        group="Cache",
        description="Audience of the ID token requested for `attic-token-exchange`: the "
        "`audience` of the exchange policy's issuer. Empty: the exchange URL's origin, e.g. "
        "`https://attic-exchange.example.com`.",
    ),
    InputSpec(
        name="push-cache",
        default="false",
        group="Publishing",
        description="Publish to the cache. Takes effect only on trusted default-branch runs "
        "with `ATTIC_TOKEN` set or a push grant from `attic-token-exchange`; pull requests stay "
        "read-only.",
    ),
    InputSpec(
        name="require-cache-push",
        default="false",
        group="Publishing",
        description="On runs that may publish, fail the step or job (once the command succeeded) "
        "when uploads failed, an output is not in the cache at the end, or the cache could not "
        "be attached. Default: a warning.",
    ),
    InputSpec(
        name="push-exclude",
        default="",
        group="Publishing",
        description="Python regular expression; store paths matching it are never uploaded.",
    ),
    InputSpec(
        name="push-paths",
        default="",
        group="Publishing",
        description="Extra paths (whitespace-separated) whose closures are pushed at the end, "
        "besides the command's `result*` links.",
    ),
    InputSpec(
        name="push-max-size",
        default="",
        group="Publishing",
        description="Paths whose NAR is larger than this are not uploaded (counted and named in "
        "the summary), e.g. `500M`, `2G` (binary units). Empty: no limit.",
    ),
    InputSpec(
        name="push-closure",
        default="runtime",
        group="Publishing",
        description="What the final push takes: `runtime` (the outputs and their runtime "
        "closures), `build` (also their build-time inputs, fetched sources included) or "
        "`outputs` (only the outputs themselves; no upload during the build).",
    ),
    InputSpec(
        name="push-jobs",
        default="6",
        group="Publishing",
        description="Concurrent uploads (1–64).",
    ),
    InputSpec(
        name="drain-timeout",
        default="120",
        group="Publishing",
        description="Seconds allowed after the command for the final push and the upload "
        "queue to drain (0–3600); what is left is reported, never waited for.",
    ),
    InputSpec(
        name="nix-installer",
        default="auto",
        group="Nix",
        description="`auto` (reuse Nix, else install upstream Nix), `upstream`, "
        "`determinate`, or `none` (Nix must already be installed).",
    ),
    InputSpec(
        name="nix-version",
        default="",
        group="Nix",
        description="Nix version to install when Nix is missing, e.g. `2.24.10`. "
        "Empty: the installer's default.",
    ),
    InputSpec(
        name="nix-installer-url",
        default="",
        group="Nix",
        description="Installer URL override (mirrors, air-gapped runners). "
        "Empty: the official URL for the chosen installer and version.",
    ),
    InputSpec(
        name="nix-installer-sha256",
        default="",
        group="Nix",
        description="Expected SHA-256 (hex) of the downloaded installer; checked when given.",
    ),
    InputSpec(
        name="extra-conf",
        default="",
        group="Nix",
        description="Extra nix.conf lines for this job, applied whether or not Nix was "
        "installed by nix-job, and removed afterwards.",
    ),
    InputSpec(
        name="github-token",
        default="",
        group="Advanced",
        description="Token for one GitHub API call, only when the event payload lacks the "
        "default branch (never the case for `push`, `workflow_dispatch` and `schedule` on "
        "github.com). Empty by default: nix-job holds no GitHub token. Never passed to the "
        "command.",
        secret=True,
    ),
)

SPECS_BY_NAME = {spec.name: spec for spec in INPUT_SPECS}
