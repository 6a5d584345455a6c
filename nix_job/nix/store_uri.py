"""Where the files of a store path are on this machine, from Nix's store URI. Pure.

nix-job serialises NARs itself (``nix_job.nix.nar``) from the *physical* location of a store
path. Facts from NixOS/nix (src/libstore/local-fs-store.hh and the local store's documentation,
``nix help-stores``): the ``store`` setting defaults to ``NIX_REMOTE`` and then to ``auto``;
``local``, ``daemon``, ``unix://…`` and ``auto`` use the files under the logical store
directory; a chroot store (``local?root=R``, or the bare absolute path ``R``) keeps the logical
``/nix/store`` and puts the files under ``R`` + the store directory; ``real=P`` names the
physical directory outright. Anything else (``ssh://``, ``ssh-ng://``, ``file://``, ``s3://``,
``http(s)://``) is not on this file system.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

_LOCAL_SCHEMES = ("", "auto", "local", "daemon", "unix")


def _local_params(store_uri: str | None) -> dict[str, str] | None:
    """The parameters of a store on this machine's file system, or None for any other store.
    A bare absolute path is a chroot store rooted there."""
    base, _, query = (store_uri or "").strip().partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if base.startswith("/"):
        params.setdefault("root", base)
        base = "local"
    scheme = base.split("://", 1)[0] if "://" in base else base
    return params if scheme in _LOCAL_SCHEMES else None


def physical_store_dir(store_uri: str | None, store_dir: str) -> str | None:
    """The directory that holds the files of ``store_dir``'s paths, or None when they are not on
    this file system (nix-job then reads every NAR through ``nix-store --dump``).

    >>> physical_store_dir(None, "/nix/store")
    '/nix/store'
    >>> physical_store_dir("local?root=/tmp/chroot", "/nix/store")
    '/tmp/chroot/nix/store'
    >>> physical_store_dir("ssh-ng://builder", "/nix/store") is None
    True
    """
    params = _local_params(store_uri)
    if params is None:
        return None
    real = params.get("real", "")
    if real.startswith("/"):
        return real.rstrip("/") or "/"
    root = params.get("root", "")
    if root and not root.startswith("/"):
        return None  # a relative root is resolved against Nix's working directory, not ours
    return root.rstrip("/") + store_dir.rstrip("/")


def physical_state_dir(store_uri: str | None, env_state_dir: str | None = None) -> str | None:
    """Nix's state directory (the database is its ``db/db.sqlite``) for a store URI on this
    machine, or None when the store is not local. ``env_state_dir`` is ``NIX_STATE_DIR``.

    Facts from NixOS/nix, src/libstore/local-fs-store.hh: ``state=`` names it; a chroot store
    keeps it at ``<root>/nix/var/nix``; otherwise it is Nix's ``nixStateDir`` (NIX_STATE_DIR,
    default ``/nix/var/nix``), which the daemon of a multi-user install uses too.

    >>> physical_state_dir("local?root=/tmp/chroot")
    '/tmp/chroot/nix/var/nix'
    """
    params = _local_params(store_uri)
    if params is None:
        return None
    state = params.get("state", "")
    if state.startswith("/"):
        return state.rstrip("/") or "/"
    root = params.get("root", "")
    if root:
        return root.rstrip("/") + "/nix/var/nix" if root.startswith("/") else None
    return (env_state_dir or "/nix/var/nix").rstrip("/") or "/"


def store_uri(env: Mapping[str, str] | None) -> str | None:
    """The store URI Nix will use given the environment it runs with: a ``store =`` line of
    ``NIX_CONFIG`` (the last one wins, as in nix.conf) over ``NIX_REMOTE``.

    A ``store`` set in a nix.conf file is not seen here; a wrong guess costs only speed, as
    every in-process NAR is checked against Nix's registered hash.
    """
    config = (env or {}).get("NIX_CONFIG", "")
    found: str | None = None
    for line in config.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "store":
            found = value.strip()
    if found is not None:
        return found
    return (env or {}).get("NIX_REMOTE") or None
