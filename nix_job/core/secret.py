"""``Secret``: a string that never prints itself. Pure.

``str()``, ``repr()`` and f-strings show ``***``; only ``reveal()`` gives the value, and the
few places that call it (the netrc writer, the HTTP Authorization header) are easy to audit.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

#: The user name in nix-job's netrc entries (Attic ignores it; curl needs one, see cache/netrc.py).
NETRC_LOGIN = "nix-job"


@dataclass(frozen=True, slots=True)
class Secret:
    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def derived_forms(self) -> tuple[str, ...]:
        """Every form that could leak the secret and must be masked too: itself, and the Basic
        credentials curl builds from a netrc entry (nix-job's login, and the login-less form
        other tools such as `attic use` write)."""
        forms = [self._value]
        for login in ("", NETRC_LOGIN):
            forms.append(base64.b64encode(f"{login}:{self._value}".encode()).decode())
        return tuple(forms)

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret(***)"

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)
