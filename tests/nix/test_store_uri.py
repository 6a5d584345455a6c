"""Where a store's files are, from the store URI Nix is given (nix_job.nix.store_uri)."""

from __future__ import annotations

import pytest

from nix_job.nix.store_uri import physical_store_dir, store_uri

STORE = "/nix/store"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param(None, STORE, id="unset"),
        pytest.param("", STORE, id="empty"),
        pytest.param("auto", STORE, id="auto"),
        pytest.param("daemon", STORE, id="daemon"),
        pytest.param("unix:///nix/var/nix/daemon-socket/socket", STORE, id="unix-socket"),
        pytest.param("local", STORE, id="local"),
        pytest.param("local?root=/tmp/r", "/tmp/r/nix/store", id="chroot-by-parameter"),
        pytest.param("local?root=/tmp/r/", "/tmp/r/nix/store", id="chroot-trailing-slash"),
        pytest.param("/tmp/r", "/tmp/r/nix/store", id="chroot-by-bare-path"),
        pytest.param("/tmp/r?real=/mnt/s", "/mnt/s", id="real-wins-over-root"),
        pytest.param("local?real=/mnt/s/", "/mnt/s", id="real-alone"),
        pytest.param("local?root=relative", None, id="relative-root-is-not-ours"),
        pytest.param("ssh-ng://builder", None, id="ssh-ng"),
        pytest.param("ssh://builder", None, id="ssh"),
        pytest.param("file:///tmp/cache", None, id="binary-cache"),
        pytest.param("https://cache.example", None, id="http-cache"),
        pytest.param("s3://bucket", None, id="s3"),
    ],
)
def test_the_physical_store_directory(uri: str | None, expected: str | None) -> None:
    assert physical_store_dir(uri, STORE) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, None, id="nothing"),
        pytest.param({"NIX_REMOTE": "daemon"}, "daemon", id="nix-remote"),
        pytest.param(
            {"NIX_REMOTE": "daemon", "NIX_CONFIG": "substituters =\nstore = /tmp/r\n"},
            "/tmp/r",
            id="nix-config-store-wins",
        ),
        pytest.param(
            {"NIX_CONFIG": "store = local\nstore = /tmp/b"}, "/tmp/b", id="last-store-line-wins"
        ),
        pytest.param({"NIX_CONFIG": "extra-store-things = x"}, None, id="other-settings"),
    ],
)
def test_the_store_uri_from_the_environment(env: dict[str, str], expected: str | None) -> None:
    assert store_uri(env) == expected
