"""The request body as a stream: Content-Length or chunked transfer coding, with look-ahead.

Used by the double's handlers to read exactly what a handler needs and to enforce size caps.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

MIB = 1024 * 1024
DRAIN_CAP = 512 * MIB


class RequestBody:
    """The request body as a stream: Content-Length or chunked, with look-ahead for caps."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._rfile = handler.rfile
        te = (handler.headers.get("Transfer-Encoding") or "").lower()
        self._chunked = "chunked" in te
        length = handler.headers.get("Content-Length") or "0"
        self._remaining: int | None = None
        if not self._chunked:
            self._remaining = int(length) if length.isdigit() else 0
        self._chunk_left = 0
        self._eof = not self._chunked and self._remaining == 0
        self._buffer = b""
        self.size = 0

    @property
    def declared_length(self) -> int | None:
        return self._remaining if not self._chunked else None

    @property
    def finished(self) -> bool:
        return self._eof and not self._buffer

    def _raw(self, n: int) -> bytes:
        if self._eof:
            return b""
        if not self._chunked:
            assert self._remaining is not None
            data = self._rfile.read(min(n, self._remaining))
            self._remaining -= len(data)
            if not data or self._remaining == 0:
                self._eof = True
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(65537)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                self._eof = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        self._chunk_left -= len(data)
        if not data:
            self._eof = True
        elif self._chunk_left == 0:
            self._rfile.readline(3)
        return data

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the body."""
        out = bytearray(self._buffer[:n])
        self._buffer = self._buffer[n:]
        while len(out) < n:
            data = self._raw(n - len(out))
            if not data:
                break
            self.size += len(data)
            out += data
        return bytes(out)

    def exceeds(self, limit: int) -> bool:
        """Whether the body is longer than ``limit`` bytes (buffers up to limit + 1)."""
        if self.declared_length is not None:
            return self.declared_length + len(self._buffer) > limit
        while len(self._buffer) <= limit:
            data = self._raw(limit + 1 - len(self._buffer))
            if not data:
                break
            self.size += len(data)
            self._buffer += data
        return len(self._buffer) > limit

    def drain(self, cap: int = DRAIN_CAP) -> bool:
        """Discard the rest; False when more than ``cap`` bytes were left."""
        self._buffer = b""
        budget = cap
        while not self._eof:
            data = self._raw(min(65536, budget))
            self.size += len(data)
            budget -= len(data)
            if budget <= 0 and not self._eof:
                return False
        return True
