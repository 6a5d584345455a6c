"""The decisions of a run that are not the gate: which nix.conf settings the job adds, whether
publishing was expected, and the final exit code. Pure, tested as tables."""

from __future__ import annotations

from collections.abc import Sequence

from nix_job.core.decision import PublishDecision
from nix_job.core.errors import DOCS_URL
from nix_job.core.problem import Problem
from nix_job.core.report import PushFacts
from nix_job.core.values import show_size

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
    if push is not None and not (push.failed or push.left_over or push.outputs_missing):
        return command_exit, None
    if push is None:
        what = (
            "nothing could be published (the cache was not attached, its configuration could "
            "not be read, or no token that can push was obtained; see the warnings above)"
        )
    elif push.outputs_missing and not (push.failed or push.left_over):
        what = f"{push.outputs_missing} output(s) are not in the cache at the end"
    else:
        what = f"{push.failed} path(s) failed and {push.left_over} were left over"
        if push.outputs_missing:
            what += f"; {push.outputs_missing} output(s) are not in the cache at the end"
    return 1, Problem.error(
        "nix-job: required cache push failed",
        f"require-cache-push is true and {what}; the command itself succeeded.",
    )


def push_token_warning(
    decision: PublishDecision, *, token_can_push: bool, cache: str, exchange_rule: str | None = None
) -> Problem | None:
    """A run that does not publish but holds a token whose claims allow push: its command
    could read the token from the temporary netrc while it runs. ``exchange_rule``: the token
    came from the token exchange, by that rule of its policy."""
    if decision.allowed or not token_can_push:
        return None
    holder, fix = "ATTIC_TOKEN", "Give runs that do not publish a pull-only token"
    if exchange_rule is not None:
        holder = f"the token the exchange minted (rule `{exchange_rule}`)"
        fix = "Make the exchange's policy grant push only to runs that publish"
    return Problem.warning(
        "nix-job: push token on a read-only run",
        f"This run does not publish ({decision.reason.rstrip('.')}), but {holder} can "
        f"push to cache `{cache}`, and the command runs as the same user as Nix, so it "
        f"could read the token from the temporary netrc while it runs. {fix} (see Security "
        "in the README).",
        DOCS_URL + "security",
    )


def upload_problems(
    push: PushFacts, *, auth_error: str | None, drain_timeout_s: int
) -> list[Problem]:
    """Warnings about the uploads of a run: push-exclude out of time; refused, or incomplete."""
    problems = []
    if push.exclude_undecided:
        problems.append(
            Problem.warning(
                "nix-job: push-exclude too slow",
                f"push-exclude ran out of time on {push.exclude_undecided} store path(s), so they "
                "were not uploaded (a pattern that backtracks, such as nested repeats). Simplify "
                "the pattern; a plain suffix like `-doc$` takes microseconds.",
            )
        )
    if push.oversize:
        names = ", ".join(f"`{p.rsplit('/', 1)[-1]}`" for p in push.oversize_sample[:3])
        more = " …" if push.oversize > 3 else ""
        problems.append(
            Problem.notice(
                "nix-job: paths too large to push",
                f"{push.oversize} store path(s) ({show_size(push.oversize_bytes)} of NAR) are "
                f"larger than push-max-size and were not uploaded: {names}{more}.",
            )
        )
    if push.throttling:
        problems.append(Problem.notice("nix-job: the cache server pushed back", push.throttling))
    if push.outputs_missing:
        problems.append(
            Problem.warning(
                "nix-job: outputs missing from the cache",
                f"{push.verification} Runs that substitute them will build them again; "
                "raise drain-timeout, or see the upload failures above.",
            )
        )
    if push.nar_fallbacks:
        problems.append(
            Problem.warning(
                "nix-job: NAR read through nix-store --dump",
                f"{push.nar_fallbacks} NAR(s) could not be sent as read from the store's files "
                f"and were read through `nix-store --dump` instead (first reason: "
                f"{push.nar_fallback_reason}). Nothing that differs from what Nix registered "
                "is ever uploaded; a hash mismatch means the store path was modified after it "
                "was registered: check it with `nix-store --verify-path`.",
            )
        )
    if auth_error:
        return [
            *problems,
            Problem.warning(
                "nix-job: uploads refused", auth_error, DOCS_URL + "401-or-403-from-attic"
            ),
        ]
    if not (push.failed or push.left_over):
        return problems
    total = push.pushed_during_build + push.pushed_final + push.failed + push.left_over
    return [
        *problems,
        Problem.warning(
            "nix-job: uploads incomplete",
            f"{push.failed} of {total} path(s) failed to upload and {push.left_over} were "
            f"left over at the drain deadline ({drain_timeout_s} s); see the job summary. The "
            "build result is not affected.",
        ),
    ]
