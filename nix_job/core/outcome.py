"""The decisions of a run that are not the gate: which nix.conf settings the job adds, whether
publishing was expected, and the final exit code. Pure, tested as tables."""

from __future__ import annotations

from collections.abc import Sequence

from nix_job.core.problem import Problem
from nix_job.core.report import PushFacts

#: Nix remembers narinfo misses for an hour by default: on a persistent runner a path another
#: job just published would be rebuilt. Whenever a cache is attached, Nix asks it again.
NEGATIVE_TTL_SETTING = ("narinfo-cache-negative-ttl", "0")

Setting = tuple[str, str]


def job_settings(
    *, extra_conf: Sequence[Setting], read_settings: Sequence[Setting]
) -> list[Setting]:
    """The nix.conf settings of this job: the user's ``extra-conf``, then (with a cache
    attached) the read side and the negative-TTL override."""
    settings = list(extra_conf)
    if read_settings:
        settings += [*read_settings, NEGATIVE_TTL_SETTING]
    return settings


def publishing_expected(*, attic_enabled: bool, allowed: bool, allowed_if_attached: bool) -> bool:
    """Whether the run *should* publish: it does, or it would have if its cache had attached.

    With ``require-cache-push``, a trusted run whose cache could not be attached is a failure,
    not a silent read-only run.
    """
    return allowed or (attic_enabled and allowed_if_attached)


def final_exit_code(
    *,
    command_exit: int,
    require_cache_push: bool,
    publishing_expected: bool,
    push: PushFacts | None,
) -> tuple[int, Problem | None]:
    """The command's exit code, unless ``require-cache-push`` turns upload trouble of a run
    that should publish (and whose command succeeded) into a failure, said in a problem."""
    if not (require_cache_push and publishing_expected) or command_exit != 0:
        return command_exit, None
    if push is not None and not (push.failed or push.left_over):
        return command_exit, None
    what = (
        "nothing could be published (the cache was not attached or its configuration could "
        "not be read; see the warnings above)"
        if push is None
        else f"{push.failed} path(s) failed and {push.left_over} were left over"
    )
    return 1, Problem.error(
        "nix-job: required cache push failed",
        f"require-cache-push is true and {what}; the command itself succeeded.",
    )
