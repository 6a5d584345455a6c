"""A test HTTP server served from a daemon thread: the one start and stop the test servers share."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class Serving:
    """Serves ``server`` (already bound) from a daemon thread until ``stop``."""

    def __init__(self, server: ThreadingHTTPServer, *, name: str) -> None:
        server.daemon_threads = True
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving, close the socket and wait (5 s at most) for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
