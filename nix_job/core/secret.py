"""``Secret``: a string that never prints itself. Pure.

``str()``, ``repr()`` and f-strings show ``***``; only ``reveal()`` gives the value, and the
few places that call it (the netrc writer, the HTTP Authorization header) are easy to audit.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Secret:
    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def derived_forms(self) -> tuple[str, ...]:
        """Forms that could leak the secret and must be masked too (Basic auth of a netrc)."""
        basic = base64.b64encode(f":{self._value}".encode()).decode()
        return (self._value, basic)

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret(***)"

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)
