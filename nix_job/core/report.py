"""What one run did, as plain values: filled in by run.py, rendered by summary.py. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from nix_job.core.problem import Kind, Problem

__all__ = ["CacheFacts", "ExchangeFacts", "Kind", "NixFacts", "Problem", "PushFacts", "RunReport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NixFacts:
    version: str
    installed_now: bool
    store: str  # "single-user" | "daemon (trusted)" | "daemon (untrusted)"
    config_delivery: str  # how settings reached Nix, e.g. "NIX_CONFIG" or "/etc/nix/nix.conf"


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheFacts:
    server: str
    cache: str
    source: str  # "inputs" | "runner hints" | mixed
    substituter: str
    public_key: str | None
    key_source: str  # "pinned" | "discovered" | "none"
    authenticated_reads: bool
    is_public: bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeFacts:
    """What the token exchange granted this run, or why it granted nothing (``failure``)."""

    url: str  # as shown (``core.urls.show_url``)
    audience: str
    granted: str | None = None  # on the run's cache: "pull and push", "pull", "push", "nothing"
    rule: str | None = None
    lifetime_s: float | None = None
    renewals: int = 0
    failure: str | None = None  # the first exchange's failure, or the last failed renewal's


@dataclass(frozen=True, slots=True, kw_only=True)
class PushFacts:
    pushed_during_build: int
    pushed_final: int
    already_cached: int
    upstream: int
    excluded: int
    vanished: int
    failed: int
    left_over: int
    bytes_uploaded: int
    drain_seconds: float
    exclude_undecided: int = 0  # of the excluded: push-exclude ran out of time on them
    nar_fallbacks: int = 0  # NARs read through nix-store --dump instead of in-process
    nar_fallback_reason: str | None = None  # the first reason
    oversize: int = 0  # paths larger than push-max-size, not uploaded
    oversize_bytes: int = 0
    oversize_sample: tuple[str, ...] = ()
    closure_mode: str = "runtime"
    without_derivation: int = 0  # build mode: outputs whose build inputs are unknown
    verification: str | None = None  # the reconcile's result, one line
    outputs_missing: int = 0  # outputs the reconcile found missing from the cache
    throttling: str | None = None  # how the server pushed back, one line
    failures: tuple[tuple[str, str], ...] = ()  # (store path, reason), the first few
    left_over_sample: tuple[str, ...] = ()  # store paths not uploaded by the drain deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    command: str
    working_directory: str
    attic_enabled: bool
    exit_code: int | None = None
    command_seconds: float | None = None
    bootstrap_seconds: float | None = None
    nix: NixFacts | None = None
    cache: CacheFacts | None = None
    exchange: ExchangeFacts | None = None
    publish_allowed: bool = False
    publish_reason: str = "not decided: the run stopped before the publish gate"
    push: PushFacts | None = None
    cancelled: bool = False
    problems: tuple[Problem, ...] = field(default_factory=tuple)
