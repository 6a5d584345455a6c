"""Real Nix accepts what the Attic double serves: substitution, signatures, netrc auth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nix_job.core.nixhash import base_name, to_attic_sha256
from tests.attic_double import AtticDouble
from tests.nixenv import NixEnv, require_nix, write_derivations


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo")
        d.create_cache("pub", public=True)
        yield d


@pytest.fixture
def chain(nix: NixEnv, tmp_path: Path) -> tuple[str, str]:
    """Two fresh paths: ``dep`` and ``top``, which references ``dep``."""
    dep, top = write_derivations(tmp_path / "expr", count=2, chain=True, size=3000).build(nix)
    return dep, top


def upload(double: AtticDouble, nix: NixEnv, path: str, cache: str, *, via: str) -> None:
    """Push one path the way nix-job's uploader does: streamed NAR, base-name references."""
    nar = nix.dump(path)
    info = {
        "cache": cache,
        "store_path_hash": base_name(path)[:32],
        "store_path": path,
        "references": [base_name(r) for r in nix.query("--references", path)],
        "system": None,
        "deriver": None,
        "sigs": [],
        "ca": None,
        "nar_hash": to_attic_sha256(nix.query("--hash", path)[0]),
        "nar_size": int(nix.query("--size", path)[0]),
    }
    raw = json.dumps(info, separators=(",", ":")).encode()
    if via == "header":
        headers, body = {"X-Attic-Nar-Info": raw.decode()}, nar
    else:
        headers, body = {"X-Attic-Nar-Info-Preamble-Size": str(len(raw))}, raw + nar

    def stream() -> Iterator[bytes]:
        for i in range(0, len(body), 1024):
            yield body[i : i + 1024]

    token = double.make_token({cache: "rw"})
    response = httpx.put(
        double.url + "_api/v1/upload-path",
        headers={**headers, "Authorization": f"Bearer {token}"},
        content=stream(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["kind"] == "Uploaded"


def puller(
    tmp_path: Path, double: AtticDouble, cache: str, *, key: str, token: str | None
) -> NixEnv:
    """A fresh Nix environment (own narinfo cache) that substitutes from the double."""
    root = tmp_path / f"pull-{len(list(tmp_path.glob('pull-*')))}"
    lines = [f"substituters = {double.substituter_url(cache)}", f"trusted-public-keys = {key}"]
    if token is not None:
        netrc = root / "netrc"
        root.mkdir(parents=True)
        netrc.write_text(f"machine 127.0.0.1\npassword {token}\n")
        netrc.chmod(0o600)
        lines.append(f"netrc-file = {netrc}")
    return NixEnv.create(root, extra_conf=lines)


@pytest.mark.nix
def test_nix_substitutes_a_pushed_closure_from_a_private_cache_with_a_netrc_token(
    double: AtticDouble, nix: NixEnv, chain: tuple[str, str], tmp_path: Path
) -> None:
    dep, top = chain
    upload(double, nix, dep, "demo", via="header")
    upload(double, nix, top, "demo", via="preamble")
    store = tmp_path / "storeB"
    pull = puller(
        tmp_path,
        double,
        "demo",
        key=double.cache("demo").public_key,
        token=double.make_token({"demo": "r"}, sub="nix"),
    )
    proc = pull.run(["nix-store", "--store", str(store), "--realise", top], check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (store / top.lstrip("/")).is_dir()
    assert (store / dep.lstrip("/")).is_dir()
    assert pull.query("--hash", top, store=store) == nix.query("--hash", top)
    reads = [r for r in double.requests if r.method == "GET" and not r.path.startswith("/_api")]
    assert {r.path.rsplit("/", 1)[-1].split(".")[-1] for r in reads} >= {"narinfo", "nar"}
    assert all(r.auth_scheme == "basic" and r.subject == "nix" for r in reads)
    assert all(r.status == 200 for r in reads)


@pytest.mark.nix
def test_nix_refuses_the_cache_with_a_wrong_trusted_key(
    double: AtticDouble, nix: NixEnv, chain: tuple[str, str], tmp_path: Path
) -> None:
    dep, top = chain
    upload(double, nix, dep, "pub", via="header")
    upload(double, nix, top, "pub", via="header")
    wrong = double.create_cache("other").public_key.replace("other:", "pub:")
    pull = puller(tmp_path, double, "pub", key=wrong, token=None)
    proc = pull.run(["nix-store", "--store", str(tmp_path / "s"), "--realise", top], check=False)
    assert proc.returncode != 0
    assert "is not signed by any of the keys" in proc.stderr.decode()


@pytest.mark.nix
def test_nix_pulls_a_public_cache_anonymously(
    double: AtticDouble, nix: NixEnv, chain: tuple[str, str], tmp_path: Path
) -> None:
    dep, top = chain
    upload(double, nix, dep, "pub", via="preamble")
    upload(double, nix, top, "pub", via="header")
    pull = puller(tmp_path, double, "pub", key=double.cache("pub").public_key, token=None)
    proc = pull.run(["nix-store", "--store", str(tmp_path / "s"), "--realise", top], check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert all(r.auth_scheme is None for r in double.requests if r.method == "GET")


@pytest.mark.nix
def test_nix_cannot_pull_a_private_cache_anonymously(
    double: AtticDouble, nix: NixEnv, chain: tuple[str, str], tmp_path: Path
) -> None:
    dep, top = chain
    upload(double, nix, dep, "demo", via="header")
    upload(double, nix, top, "demo", via="header")
    pull = puller(tmp_path, double, "demo", key=double.cache("demo").public_key, token=None)
    proc = pull.run(["nix-store", "--store", str(tmp_path / "s"), "--realise", top], check=False)
    assert proc.returncode != 0
    cache_info = [r for r in double.requests if r.path == "/demo/nix-cache-info"]
    assert cache_info
    assert cache_info[0].status == 401


@pytest.mark.nix
def test_narinfo_signature_equals_the_one_nix_computes_with_the_same_key(
    double: AtticDouble, nix: NixEnv, chain: tuple[str, str], tmp_path: Path
) -> None:
    _dep, top = chain
    upload(double, nix, top, "demo", via="header")
    key_file = tmp_path / "secret-key"
    key_file.write_text(double.cache("demo").secret_key)
    target = tmp_path / "file-cache"
    nix.run(["nix", "copy", "--to", f"file://{target}?secret-key={key_file}", top])
    hash_part = base_name(top)[:32]
    nix_lines = (target / f"{hash_part}.narinfo").read_text().splitlines()
    token = double.make_token({"demo": "r"})
    ours = httpx.get(
        double.url + f"demo/{hash_part}.narinfo", headers={"Authorization": f"Bearer {token}"}
    ).text.splitlines()

    def field(lines: list[str], name: str) -> str:
        return next(line for line in lines if line.startswith(name + ": "))

    assert field(ours, "Sig") == field(nix_lines, "Sig")
    assert field(ours, "References") == field(nix_lines, "References")
    assert field(ours, "NarSize") == field(nix_lines, "NarSize")
    assert field(ours, "NarHash") == "NarHash: " + to_attic_sha256(
        field(nix_lines, "NarHash").split(": ", 1)[1]
    )


# --- the test bed itself (tests/nixenv.py) ------------------------------------------------


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [
        pytest.param("true", pytest.fail.Exception, id="ci-without-nix-fails"),
        pytest.param("", pytest.skip.Exception, id="local-without-nix-skips"),
    ],
)
def test_require_nix_without_nix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        require_nix()


def test_nix_env_is_isolated_and_offline(tmp_path: Path) -> None:
    env = NixEnv.create(tmp_path, extra_conf=["netrc-file = /x"]).env(
        {"PATH": "/bin", "NIX_CONFIG": "substituters = https://cache.nixos.org", "NIX_PATH": "x"}
    )
    assert env["XDG_CACHE_HOME"] == str(tmp_path / "xdg-cache")
    assert env["NIX_REMOTE"] == "local"
    assert "NIX_PATH" not in env
    assert env["NIX_CONFIG"].splitlines() == [
        "substituters =",
        "build-users-group =",
        "sandbox = false",
        "experimental-features = nix-command",
        "netrc-file = /x",
    ]


@pytest.mark.nix
def test_written_derivations_are_unique_chained_and_sized(nix: NixEnv, tmp_path: Path) -> None:
    first = write_derivations(tmp_path, count=3, chain=True, size=1000, sleep_s=0.01)
    second = write_derivations(tmp_path, count=3, chain=True, size=1000)
    paths = first.build(nix)
    assert paths == [first.out_paths(nix)[a] for a in first.attrs]
    assert not set(paths) & set(second.out_paths(nix).values())
    assert nix.query("--references", paths[2]) == [paths[1]]
    assert nix.query("--references", paths[0]) == []
    assert (Path(paths[1]) / "blob").stat().st_size == 1000


@pytest.mark.nix
def test_a_failing_derivation_fails_its_build(nix: NixEnv, tmp_path: Path) -> None:
    drvs = write_derivations(tmp_path, count=2, fail=[1])
    ok = nix.build(drvs.file, "d0")
    failed = nix.run(["nix-build", "--no-out-link", str(drvs.file), "-A", "d1"], check=False)
    assert len(ok) == 1
    assert failed.returncode != 0
    assert f"derivation 1 of {drvs.tag} fails on purpose" in failed.stderr.decode()
