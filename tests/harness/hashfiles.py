"""``hashFiles()`` of GitHub expressions: glob patterns under the workspace, SHA-256 of SHA-256s.

Follows the runner's algorithm (each matched file's digest fed into one SHA-256; '' when nothing
matches; files outside the workspace ignored; ``!`` excludes; a matched directory matches its
files). Simplified: files are taken in sorted path order, where the runner uses directory order.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate an @actions/glob pattern (``*``, ``**``, ``?``, ``[...]``) to a regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            # '**/' matches zero or more directories; a trailing '**' matches everything below.
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            else:
                out.append(".*")
                i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


def _relative_pattern(workspace: Path, pattern: str) -> str | None:
    text = pattern.strip()
    if text.startswith("/"):
        try:
            return Path(text).relative_to(workspace).as_posix()
        except ValueError:
            return None
    while text.startswith("./"):
        text = text[2:]
    return text.rstrip("/")


def matched_files(workspace: Path, patterns: Sequence[str]) -> list[Path]:
    """Files under ``workspace`` selected by the patterns (later patterns win, ``!`` excludes)."""
    root = workspace.resolve()
    compiled: list[tuple[bool, re.Pattern[str]]] = []
    for raw in patterns:
        for line in raw.splitlines():
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            negate = text.startswith("!")
            relative = _relative_pattern(root, text[1:] if negate else text)
            if relative is not None:
                compiled.append((negate, glob_to_regex(relative)))
    selected: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            ancestors = [relative]
            parts = relative.split("/")
            ancestors.extend("/".join(parts[:n]) for n in range(1, len(parts)))
            included = False
            for negate, regex in compiled:
                if any(regex.fullmatch(candidate) for candidate in ancestors):
                    included = not negate
            if included and path.is_file():
                selected.append(path)
    return selected


def hash_files(workspace: Path, patterns: Sequence[str]) -> str:
    """The hex digest ``hashFiles(patterns)`` returns, or '' when no file matches."""
    files = matched_files(workspace, patterns)
    if not files:
        return ""
    total = hashlib.sha256()
    for path in files:
        total.update(hashlib.sha256(path.read_bytes()).digest())
    return total.hexdigest()
