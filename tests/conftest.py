"""Suite-wide fixtures: the tests never see the real runner's environment."""

from __future__ import annotations

import os

import pytest

SCRUBBED_PREFIXES = ("GITHUB_", "RUNNER_", "INPUT_", "NIX_JOB_", "ATTIC_", "ACTIONS_")


@pytest.fixture(autouse=True)
def _scrub_runner_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite itself may run inside GitHub Actions: hide that from every test."""
    for key in list(os.environ):
        if key.startswith(SCRUBBED_PREFIXES) or key in ("NIX_CONFIG", "BAZEL_REMOTE_CACHE"):
            monkeypatch.delenv(key, raising=False)
