"""URLs nix-job is given or told about: one check, one normal form, one loopback test. Pure."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit


def url_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable http(s) URL (as a phrase after the URL), or None.

    Never echoes the value: a mistyped URL may hold credentials.
    """
    if any(c.isspace() for c in value) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "must start with https:// or http://"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "has port 0"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials; put the token in the ATTIC_TOKEN environment variable"
    if parts.query or parts.fragment:
        return "must not contain a query or fragment"
    return None


def with_slash(url: str) -> str:
    """The URL with exactly one trailing ``/``, so API paths join onto it (attic does the same
    with ``Url::join``)."""
    return url.strip().rstrip("/") + "/"


def show_url(value: str, limit: int = 80) -> str:
    """A URL for a message: any credentials in it replaced by ``***``, long ones cut, quoted."""
    shown = re.sub(r"//[^/@\s]*@", "//***@", value)
    return repr(shown if len(shown) <= limit else shown[: limit - 3] + "...")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback address (127.0.0.0/8,
    ::1). ``127.attacker.example`` is a name, not an address, and not loopback."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        # RFC 6761 §6.3: localhost names resolve to loopback.
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False
