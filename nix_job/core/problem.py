"""The one problem type: what failed (title), why and what to do (message), and where to read
more (a README anchor). Every adapter returns these; every front end reports them. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["error", "warning", "notice"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    kind: Kind
    title: str  # short, names the part of nix-job: "nix-job: temporary netrc"
    message: str  # what failed, why, and what to do, in full sentences
    hint_url: str | None = None  # README troubleshooting anchor

    @classmethod
    def error(cls, title: str, message: str, hint_url: str | None = None) -> Problem:
        return cls(kind="error", title=title, message=message, hint_url=hint_url)

    @classmethod
    def warning(cls, title: str, message: str, hint_url: str | None = None) -> Problem:
        return cls(kind="warning", title=title, message=message, hint_url=hint_url)

    @classmethod
    def notice(cls, title: str, message: str, hint_url: str | None = None) -> Problem:
        return cls(kind="notice", title=title, message=message, hint_url=hint_url)

    @property
    def text(self) -> str:
        """The message with its help link, for a one-line annotation or log line."""
        return self.message if not self.hint_url else f"{self.message} ({self.hint_url})"
