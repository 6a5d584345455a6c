"""The publish decision every front end's gate returns, and what the gate decides from. Pure."""

from __future__ import annotations

from dataclasses import dataclass

#: The variable the user's command gets: whether this run publishes.
CACHE_PUSH_ENV = "NIX_JOB_CACHE_PUSH"


@dataclass(frozen=True, slots=True, kw_only=True)
class GateInputs:
    """What the gate needs besides the CI's own facts about the run."""

    push_cache: bool  # the user's switch
    token_present: bool  # a credential that could publish is available
    cache_attached: bool  # an Attic cache is attached to this run
    # Why no credential can publish, when the lifecycle knows better than "ATTIC_TOKEN is
    # empty" (the token exchange refused, or granted pull only); a clause, no final period.
    token_missing: str | None = None


def token_missing_decision(gate: GateInputs, *, where: str) -> PublishDecision | None:
    """The gates' answer when the token exchange left the run without a push token (``where``:
    "on the default branch", …); None when ``token_missing`` is not set."""
    if gate.token_missing is None:
        return None
    return deny(
        f"{gate.token_missing}, so this run cannot publish.",
        notice=f"push-cache is true {where}, but {gate.token_missing}: see the token exchange's "
        "problem above, or its policy (docs/token-exchange.md).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishDecision:
    """``reason``: one sentence naming the deciding fact, for the log and the summary.

    ``notice``: set when push-cache is true but the run stays read-only for a reason the
    user may want explained or may want to fix; worth a notice of its own.
    """

    allowed: bool
    reason: str
    notice: str | None = None


def deny(reason: str, notice: str | None = None) -> PublishDecision:
    return PublishDecision(allowed=False, reason=reason, notice=notice)


def cache_push_env(decision: PublishDecision) -> dict[str, str]:
    """``NIX_JOB_CACHE_PUSH=true|false`` for the user's command."""
    return {CACHE_PUSH_ENV: "true" if decision.allowed else "false"}
