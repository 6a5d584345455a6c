"""``nix-job token-exchange``: usage and startup errors (exit 2), ``--check``, a taken port
(exit 1), and the real server process: /healthz, one exchange, SIGTERM, a clean exit."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nix_job.args import UsageError
from nix_job.exchange.service import main, parse_listen
from tests.attic_double import AtticDouble
from tests.exchange.issuer import FakeIssuer
from tests.exchange.support import AUDIENCE, HS256_SECRET, policy_text, secret_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures the process's root logger; give pytest its own back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(name="gh") as fake:
        yield fake


@pytest.fixture
def config(tmp_path: Path, issuer: FakeIssuer) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(issuer.url, "https://gitlab.example.com"))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        pytest.param([], "the following arguments are required: --config", id="no-config"),
        pytest.param(["--config", "p.toml", "--listen", "8080"], "--listen '8080'", id="listen"),
        pytest.param(["--config", "p.toml", "--bogus"], "unrecognized arguments", id="unknown"),
        pytest.param(["--config", "/nonexistent/p.toml"], "cannot read the policy", id="missing"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, {}) == 2
    assert text in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    assert "--secret-file" in capsys.readouterr().out


def test_bad_policy_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(policy_text("https://a.example.com", "http://gitlab.example.com"))
    assert main(["--config", str(path)], secret_env()) == 2
    err = capsys.readouterr().err
    assert "1 policy problem(s); the service did not start" in err
    assert "issuers.gitlab.url: 'http://gitlab.example.com' must use https" in err


def test_missing_secret_exits_2(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config)], {}) == 2
    assert (
        "no signing secret: set ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64" in capsys.readouterr().err
    )


def test_check_validates_and_exits_0(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "--check"], secret_env()) == 0
    assert "and the signing secret are usable" in capsys.readouterr().out
    secret = tmp_path / "secret"
    secret.write_text(secret_env()["ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"])
    with_algorithm = tmp_path / "with-algorithm.toml"
    with_algorithm.write_text(
        config.read_text().replace("leeway = 30", 'leeway = 30\nalgorithm = "HS256"')
    )
    argv = ["--config", str(with_algorithm), "--secret-file", str(secret), "--check"]
    assert main(argv, {}) == 0


def test_a_taken_port_exits_1(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--config", str(config), "--listen", f"127.0.0.1:{port}"], secret_env()) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),  # noqa: S104 - a value under test, not a bind
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8080", ":8080", "host:", "host:0", "host:70000", "host:x"])
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        parse_listen(value)


def test_real_server_process(config: Path, issuer: FakeIssuer, tmp_path: Path) -> None:
    port = free_port()
    stderr_path = tmp_path / "stderr"
    env = {"PATH": os.environ.get("PATH", ""), **secret_env()}
    argv = [sys.executable, "-m", "nix_job.exchange", "--config", str(config)]
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [*argv, "--listen", f"127.0.0.1:{port}"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, stderr_path.read_text()
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the service did not answer /healthz"
                time.sleep(0.1)
            id_token = issuer.sign(issuer.github_claims(audience=AUDIENCE))
            response = client.post(
                "/v1/exchange",
                headers={"Authorization": f"Bearer {id_token}"},
                json={"cache": "main"},
            )
        assert response.status_code == 200, response.text
        minted = response.json()["token"]
        with AtticDouble(token_secret=HS256_SECRET) as double:
            double.create_cache("main")
            attic = httpx.post(
                f"{double.url}/_api/v1/get-missing-paths",
                headers={"Authorization": f"Bearer {minted}"},
                json={"cache": "main", "store_path_hashes": []},
                timeout=10,
            )
            assert attic.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr_path.read_text()
    decisions = [
        json.loads(line.split(" nix_job.exchange.decision ", 1)[1])
        for line in log.splitlines()
        if " nix_job.exchange.decision " in line
    ]
    assert [(d["outcome"], d["rule"], d["caches"]) for d in decisions] == [
        ("granted", "gh-publish", {"main": "rw"})
    ]
    assert "signing with the HS256 secret from ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64" in log
    assert secret_env()["ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"] not in log
    for token in (id_token, minted):
        for part in token.split("."):
            assert part not in log
