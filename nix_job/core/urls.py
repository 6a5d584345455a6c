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


def exchange_url_problem(value: str) -> str | None:
    """Why ``value`` cannot be a token exchange's URL, or None: an http(s) URL, and https unless
    the host is loopback. SECURITY: the job's ID token travels in the request, and whoever
    reads it on the way can exchange it until it expires."""
    if why := url_problem(value):
        return why
    parts = urlsplit(value.strip())
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or ""):
        return (
            "must use https:// (the job's ID token travels in the request; http:// is accepted "
            "only for loopback addresses)"
        )
    return None


def audience_problem(value: str) -> str | None:
    """Why ``value`` cannot be an OIDC audience, or None. GitHub and GitLab take any string;
    it travels in a URL query and a JWT, so no whitespace or control characters."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains whitespace or control characters"
    if len(value) > 1000:
        return f"is {len(value)} characters long; an audience is a short name or URL"
    return None


def origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, lower-case, without path or trailing ``/``
    (RFC 6454's serialisation; a default port is left out)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


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
