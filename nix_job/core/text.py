"""Text that leaves nix-job: secrets replaced before anything prints them. Pure."""

from __future__ import annotations

REDACTED = "***"


class Redactor:
    """Replaces every registered secret (and each line of a multi-line one) with ``***``.

    Front ends run every line they print, every output and the summary through it: on GitHub
    the runner masks too (``::add-mask::``), on GitLab and elsewhere nothing else does.
    """

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, secret: str) -> bool:
        """Register ``secret`` (and its lines); True when anything new was registered."""
        new = [v for v in dict.fromkeys((secret, *secret.splitlines())) if v.strip()]
        new = [v for v in new if v not in self._secrets]
        if not new:
            return False
        # Longest first, so a secret that contains another is replaced whole. A new list,
        # swapped in whole: another thread (a token renewal) may add while this one redacts,
        # and an in-place sort would show it an empty list meanwhile.
        self._secrets = sorted([*self._secrets, *new], key=len, reverse=True)
        return True

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every registered value (for writers that must refuse rather than redact)."""
        return tuple(self._secrets)

    def __contains__(self, value: object) -> bool:
        return value in self._secrets
