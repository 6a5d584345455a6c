"""The publish gate: may this run push to the cache? Pure, fail-closed, one reason per answer.

Only ``push``, ``workflow_dispatch`` and ``schedule`` runs of the default branch publish, and
only with a cache attached, a token and ``push-cache: true``. Everything else reads only.
"""

from __future__ import annotations

from nix_job.core.decision import (
    CACHE_PUSH_ENV,
    GateInputs,
    PublishDecision,
    cache_push_env,
    deny,
    token_missing_decision,
)
from nix_job.frontends.github.event import BRANCH_SOURCE_TEXT, TRUSTED_EVENTS, EventContext

__all__ = ["CACHE_PUSH_ENV", "PublishDecision", "cache_push_env", "decide_publish"]

# Events that run on, or can be steered by, pull-request input: read-only, always.
_PULL_REQUEST_REASONS: dict[str, str] = {
    "pull_request": "pull requests stay read-only",
    "pull_request_target": (
        "they act on pull-request input with the base repository's secrets, so they stay read-only"
    ),
    "pull_request_review": "pull requests stay read-only",
    "pull_request_review_comment": "pull requests stay read-only",
    "issue_comment": "comments can come from anyone and can steer pull-request builds, "
    "so they stay read-only",
    "workflow_run": "they can build artifacts of pull requests, so they stay read-only",
    "merge_group": (
        "merge-queue code is reviewed but not yet on the default branch, so it stays read-only"
    ),
}


def _deny(reason: str, notice: str | None = None) -> PublishDecision:
    return deny(reason, notice)


def _ref_text(ref: str) -> str:
    if ref.startswith("refs/tags/"):
        return f"tag {ref.removeprefix('refs/tags/')!r}"
    if ref.startswith("refs/heads/"):
        return f"branch {ref.removeprefix('refs/heads/')!r}"
    return f"ref {ref!r}"


def decide_publish(*, event: EventContext, gate: GateInputs) -> PublishDecision:
    """Decide whether this run may publish. Fails closed: any doubt means read-only.

    The checks run in the order that gives the most useful reason: the user's own switch
    first, then the event, the payload, the ref, and last what configuration is missing.
    """
    name = event.event_name
    if not gate.push_cache:
        return _deny("push-cache is false, so this run reads the cache and publishes nothing.")

    if name in _PULL_REQUEST_REASONS:
        origin = f"{name} runs from a fork" if event.is_fork else f"{name} runs"
        why = _PULL_REQUEST_REASONS[name]
        branch = event.default_branch or "the default branch"
        return _deny(
            f"{origin} never publish: {why}, whatever push-cache says.",
            notice=(
                f"push-cache is true, but this is a {name} run: {why}, so nothing is "
                f"published. Builds are published once the change reaches {branch}."
            ),
        )
    if not name:
        return _deny(
            "GITHUB_EVENT_NAME is not set, so the triggering event is unknown and this run "
            "does not publish.",
            notice="push-cache is true, but GITHUB_EVENT_NAME is not set: nix-job only "
            "publishes from GitHub Actions push, workflow_dispatch and schedule runs.",
        )
    if name not in TRUSTED_EVENTS:
        return _deny(
            f"{name} runs never publish: only push, workflow_dispatch and schedule runs "
            "of the default branch do."
        )

    if event.problems:
        details = "; ".join(event.problems)
        return _deny(
            f"the run's event context is unreliable ({details}), so this run does not publish.",
            notice=f"push-cache is true, but nothing is published: {details}.",
        )

    if event.default_branch is None:
        lookup = (
            f"the GitHub API lookup failed: {event.lookup_error}"
            if event.lookup_error
            else "no GitHub API lookup was possible"
        )
        return _deny(
            f"the default branch is unknown (the event payload does not name it and {lookup}), "
            "so this run does not publish.",
            notice="push-cache is true, but the default branch could not be determined; "
            "set `github-token: ${{ github.token }}` so nix-job can ask the GitHub API.",
        )

    default_ref = f"refs/heads/{event.default_branch}"
    if not event.ref:
        return _deny(
            f"GITHUB_REF is not set, so this {name} run cannot be shown to be on the default "
            f"branch {event.default_branch!r} and does not publish."
        )
    if event.ref != default_ref:
        return _deny(
            f"this {name} run is on {_ref_text(event.ref)}, not the default branch "
            f"{event.default_branch!r}; only the default branch publishes."
        )

    if not gate.cache_attached:
        return _deny(
            "no Attic cache is attached to this run (attic-enabled is false, no server or "
            "cache is configured, or attaching failed), so there is nothing to publish to.",
            notice="push-cache is true on the default branch, but no Attic cache is attached: "
            "set attic-server and attic-cache (or the ATTIC_SERVER and ATTIC_CACHE runner "
            "variables) to publish.",
        )
    if not gate.token_present:
        if exchanged := token_missing_decision(gate, where="on the default branch"):
            return exchanged
        return _deny(
            "ATTIC_TOKEN is not set, so this run cannot publish.",
            notice="push-cache is true on the default branch, but ATTIC_TOKEN is empty: "
            "set `ATTIC_TOKEN: ${{ secrets.ATTIC_TOKEN }}` in the step's env to publish.",
        )

    source = event.default_branch_source
    known = f" ({BRANCH_SOURCE_TEXT[source]})" if source is not None else ""
    return PublishDecision(
        allowed=True,
        reason=f"this {name} run is on the default branch {event.default_branch!r}{known} "
        "with a token and push-cache true, so new store paths are published.",
    )
