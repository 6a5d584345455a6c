"""An Attic-compatible server double for tests and ``./scripts/demo``.

Run it alone with ``python -m tests.attic_double``.

Strict about the wire protocol (zhaofengli/attic's server), records everything, injects faults
on demand.
"""

from tests.attic_double.protocol import Keypair, fingerprint, render_narinfo
from tests.attic_double.server import AtticDouble
from tests.attic_double.state import (
    CacheInfo,
    Faults,
    RecordedRequest,
    ServerConfig,
    StoredObject,
)

__all__ = [
    "AtticDouble",
    "CacheInfo",
    "Faults",
    "Keypair",
    "RecordedRequest",
    "ServerConfig",
    "StoredObject",
    "fingerprint",
    "render_narinfo",
]
