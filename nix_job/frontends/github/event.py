"""What triggered this run: event name, ref, default branch and fork status. Pure.

``read_event`` reads the runner's environment and the webhook payload bytes (the caller reads
``GITHUB_EVENT_PATH``); it never raises and lists anything missing or malformed in ``problems``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

BranchSource = Literal["payload", "schedule-ref", "api"]

# The only events that may publish (on the default branch); gating.py owns the decision.
TRUSTED_EVENTS: frozenset[str] = frozenset({"push", "workflow_dispatch", "schedule"})

BRANCH_SOURCE_TEXT: Mapping[BranchSource, str] = {
    "payload": "from the event payload",
    "schedule-ref": "from GITHUB_REF_NAME (scheduled runs always run on the default branch)",
    "api": "from the GitHub API (the event payload lacked it)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class EventContext:
    """The facts the publish gate decides on. Empty strings mean "not set"."""

    event_name: str
    ref: str  # full ref, e.g. refs/heads/main, refs/tags/v1, refs/pull/7/merge
    ref_name: str
    ref_type: str  # "branch", "tag" or ""
    ref_protected: bool
    repository: str  # owner/name
    default_branch: str | None
    default_branch_source: BranchSource | None
    # Only meaningful when the payload carries a ``pull_request`` object; None otherwise.
    is_fork: bool | None
    # Why the API lookup of the default branch failed (default_branch_lookup sets it).
    lookup_error: str | None = None
    problems: tuple[str, ...] = ()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _parse_payload(payload: bytes | None, problems: list[str]) -> dict[str, object]:
    if payload is None:
        problems.append(
            "no event payload was available (GITHUB_EVENT_PATH is unset or its file "
            "could not be read)"
        )
        return {}
    if not payload.strip():
        problems.append("the event payload file is empty")
        return {}
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; deep nesting recurses.
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        problems.append(f"the event payload is not valid JSON ({detail})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"the event payload is {_type_name(data)}, not a JSON object")
        return {}
    return data


class _Reader:
    """Typed access to nested payload fields; wrong types become problems, never exceptions."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def obj(self, parent: Mapping[str, object] | None, key: str, where: str) -> dict[str, object]:
        """The object at ``parent[key]``, or {} when absent (null counts as absent)."""
        if parent is None:
            return {}
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(
                f"`{where}` in the event payload is {_type_name(value)}, not an object"
            )
            return {}
        return value

    def text(self, parent: Mapping[str, object], key: str, where: str) -> str | None:
        """The non-empty string at ``parent[key]``, or None when absent or empty."""
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problems.append(
                f"`{where}` in the event payload is {_type_name(value)}, not a string"
            )
            return None
        return value or None


@dataclass(frozen=True, slots=True, kw_only=True)
class _PayloadFields:
    repository: dict[str, object]
    has_pull_request: bool
    head_repo: dict[str, object]
    base_repo: dict[str, object]


def _fields(data: Mapping[str, object], reader: _Reader) -> _PayloadFields:
    pull_request = reader.obj(data, "pull_request", "pull_request")
    head = reader.obj(pull_request, "head", "pull_request.head")
    base = reader.obj(pull_request, "base", "pull_request.base")
    return _PayloadFields(
        repository=reader.obj(data, "repository", "repository"),
        has_pull_request=data.get("pull_request") is not None,
        head_repo=reader.obj(head, "repo", "pull_request.head.repo"),
        base_repo=reader.obj(base, "repo", "pull_request.base.repo"),
    )


def _default_branch(
    fields: _PayloadFields,
    reader: _Reader,
    *,
    event_name: str,
    ref: str,
    ref_name: str,
) -> tuple[str | None, BranchSource | None]:
    from_repository = reader.text(fields.repository, "default_branch", "repository.default_branch")
    from_base = reader.text(
        fields.base_repo, "default_branch", "pull_request.base.repo.default_branch"
    )
    if from_repository is not None:
        return from_repository, "payload"
    if from_base is not None:
        return from_base, "payload"
    if event_name == "schedule":
        # Scheduled runs always run on the default branch; believe the ref only when
        # GITHUB_REF and GITHUB_REF_NAME agree that it is a branch.
        name = ref_name or ref.removeprefix("refs/heads/")
        if name and ref in ("", f"refs/heads/{name}") and not name.startswith("refs/"):
            return name, "schedule-ref"
    return None, None


def _is_fork(fields: _PayloadFields) -> bool | None:
    """``head.repo.fork``, or head and base repositories differ; no head repo: a fork."""
    if not fields.has_pull_request:
        return None
    head_repo, base_repo = fields.head_repo, fields.base_repo
    if not head_repo:
        return True  # a deleted, hidden or malformed head repository: assume a fork
    fork = head_repo.get("fork")
    if fork is not None and fork is not False:
        return True
    head_name = head_repo.get("full_name")
    base_name = base_repo.get("full_name")
    if not isinstance(head_name, str) or not isinstance(base_name, str):
        return True
    return head_name.lower() != base_name.lower()


def read_event(env: Mapping[str, str], payload: bytes | None) -> EventContext:
    """Read the triggering event from ``GITHUB_*`` variables and the payload bytes.

    Never raises. The default branch comes from ``repository.default_branch``, else
    ``pull_request.base.repo.default_branch``, else (``schedule`` only) ``GITHUB_REF_NAME``.
    """
    problems: list[str] = []
    event_name = env.get("GITHUB_EVENT_NAME", "")
    ref = env.get("GITHUB_REF", "")
    ref_name = env.get("GITHUB_REF_NAME", "")
    if not event_name:
        problems.append("GITHUB_EVENT_NAME is not set, so the triggering event is unknown")
    data = _parse_payload(payload, problems)
    reader = _Reader(problems)
    fields = _fields(data, reader)
    default_branch, source = _default_branch(
        fields, reader, event_name=event_name, ref=ref, ref_name=ref_name
    )
    return EventContext(
        event_name=event_name,
        ref=ref,
        ref_name=ref_name,
        ref_type=env.get("GITHUB_REF_TYPE", ""),
        ref_protected=env.get("GITHUB_REF_PROTECTED", "") == "true",
        repository=env.get("GITHUB_REPOSITORY", ""),
        default_branch=default_branch,
        default_branch_source=source,
        is_fork=_is_fork(fields),
        problems=tuple(problems),
    )
