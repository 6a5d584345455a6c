"""Finding and installing Nix: pure decisions, detection with fakes and with the real Nix, and
the whole install chain over real HTTP on 127.0.0.1 with a stand-in installer script."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tenacity

from nix_job.core.errors import NixInstallError
from nix_job.nix.detect import detect_nix, find_nix
from nix_job.nix.facts import (
    DEFAULT_NIX_VERSION,
    HostPaths,
    InstallRequest,
    UserIdentity,
    decide_store_mode,
    decide_trust,
    installer_conf,
    parse_config,
    parse_version,
    plan_install,
)
from nix_job.nix.install import Bootstrap, NixBootstrapper
from nix_job.process import SubprocessRunner
from tests.fakes.process import FakeRunner, Handler, answer
from tests.logs import captured_log
from tests.nixenv import NixEnv, require_nix
from tests.serving import Serving

FIXTURES = Path(__file__).parents[1] / "fixtures" / "installer"
ROOT = UserIdentity(name="root", uid=0, groups=("root",))
RUNNER = UserIdentity(name="runner", uid=1001, groups=("runner", "docker"))
REAL_NIX = shutil.which("nix") or "/usr/bin/nix"


# ---------------------------------------------------------------------------------------------
# Fakes


def fake_nix_handlers(
    version: str = "nix (Nix) 2.8.0", config: Mapping[str, object] | None = None
) -> list[Handler]:
    shown = json.dumps({k: {"value": v} for k, v in (config or {}).items()})
    return [
        answer(lambda a: a[1:] == ("--version",), version + "\n"),
        answer(lambda a: "show-config" in a or a[1:3] == ("config", "show"), shown),
    ]


def fake_nix_bin(tmp_path: Path) -> Path:
    """A directory with an executable `nix` the fake runner answers for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    nix = bin_dir / "nix"
    nix.write_text("#!/bin/sh\nexit 99\n")
    nix.chmod(0o755)
    return bin_dir


def fake_host(
    tmp_path: Path, *, state_writable: bool, socket: bool, systemd: bool = False
) -> HostPaths:
    state = tmp_path / "state"
    if state_writable:
        state.mkdir(exist_ok=True)
    sock = tmp_path / "daemon-socket"
    if socket:
        sock.write_text("")
    systemd_dir = tmp_path / "systemd"
    if systemd:
        systemd_dir.mkdir(exist_ok=True)
    return HostPaths(state_dir=state, daemon_socket=sock, systemd_dir=systemd_dir)


# ---------------------------------------------------------------------------------------------
# Pure decisions


@pytest.mark.parametrize(
    ("output", "version"),
    [
        pytest.param("nix (Nix) 2.8.0\n", "2.8.0", id="debian-2.8"),
        pytest.param("nix (Nix) 2.31.2\n", "2.31.2", id="upstream"),
        pytest.param("nix (Determinate Nix 3.8.2) 2.30.1\n", "2.30.1", id="determinate"),
        pytest.param("nix (Lix, like Nix) 2.91.1\nSystem type: x86_64-linux\n", "2.91.1", id="lix"),
        pytest.param("nix (Nix) 2.32.0pre20250101_abcdef\n", "2.32.0pre20250101_abcdef", id="pre"),
    ],
)
def test_version_is_read_from_every_known_banner(output: str, version: str) -> None:
    assert parse_version(output) == version


@pytest.mark.parametrize(
    "output", [pytest.param("", id="empty"), pytest.param("nix (Nix)\n", id="no-number")]
)
def test_a_banner_without_version_is_refused(output: str) -> None:
    with pytest.raises(ValueError, match="no version"):
        parse_version(output)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        pytest.param(
            json.dumps(
                {
                    "store": {"value": "auto", "defaultValue": "auto"},
                    "trusted-users": {"value": ["root", "@wheel"]},
                    "require-sigs": {"value": True},
                    "max-jobs": {"value": 4},
                }
            ),
            {
                "store": "auto",
                "trusted-users": "root @wheel",
                "require-sigs": "true",
                "max-jobs": "4",
            },
            id="json-with-value-objects",
        ),
        pytest.param(
            json.dumps({"substituters": ["a", "b"], "netrc-file": "/etc/nix/netrc"}),
            {"substituters": "a b", "netrc-file": "/etc/nix/netrc"},
            id="json-plain-values",
        ),
        pytest.param(
            "store = daemon\ntrusted-users = root runner\nsubstituters =\n",
            {"store": "daemon", "trusted-users": "root runner", "substituters": ""},
            id="plain-text",
        ),
    ],
)
def test_effective_config_is_parsed_from_every_output_form(
    output: str, expected: dict[str, str]
) -> None:
    assert parse_config(output) == expected


@pytest.mark.parametrize(
    ("store", "writable", "socket", "daemon", "says"),
    [
        pytest.param("daemon", True, False, True, "daemon", id="store-daemon"),
        pytest.param("unix:///run/nix.sock", True, True, True, "unix://", id="store-unix-uri"),
        pytest.param("local", False, True, False, "directly", id="store-local"),
        pytest.param("/tmp/chroot", False, True, False, "directly", id="chroot-store"),
        pytest.param("auto", True, True, False, "writable", id="root-on-multi-user-uses-local"),
        pytest.param("auto", False, True, True, "socket", id="auto-with-socket"),
        pytest.param("auto", False, False, False, "no daemon socket", id="auto-nothing"),
        pytest.param("ssh-ng://builder", False, True, False, "neither", id="remote-store"),
    ],
)
def test_daemon_is_decided_like_nix_auto_store(
    store: str, writable: bool, socket: bool, daemon: bool, says: str
) -> None:
    got, reason = decide_store_mode(store=store, state_dir_writable=writable, socket_exists=socket)
    assert got is daemon
    assert says in reason


@pytest.mark.parametrize(
    ("daemon", "user", "trusted_users", "daemon_says", "trusted", "says"),
    [
        pytest.param(False, RUNNER, ["root"], None, True, "no daemon", id="local-store-always"),
        pytest.param(True, ROOT, [], None, True, "root", id="root"),
        pytest.param(True, RUNNER, ["root", "runner"], None, True, "(runner)", id="by-name"),
        pytest.param(True, RUNNER, ["*"], None, True, "(*)", id="star"),
        pytest.param(True, RUNNER, ["root", "@docker"], None, True, "@docker", id="by-group"),
        pytest.param(
            True, RUNNER, ["root", "@wheel"], None, False, "not trusted", id="other-group"
        ),
        pytest.param(True, RUNNER, ["root"], None, False, "trusted-users = root", id="untrusted"),
        pytest.param(
            True, RUNNER, ["*"], False, False, "does not trust", id="daemon-has-last-word"
        ),
        pytest.param(True, RUNNER, ["root"], True, True, "reports it trusts", id="daemon-trusts"),
    ],
)
def test_trust_follows_the_daemon_rules(
    *,
    daemon: bool,
    user: UserIdentity,
    trusted_users: list[str],
    daemon_says: bool | None,
    trusted: bool,
    says: str,
) -> None:
    got, reason = decide_trust(
        daemon=daemon, user=user, trusted_users=trusted_users, daemon_says=daemon_says
    )
    assert got is trusted
    assert says in reason


@pytest.mark.parametrize(
    ("request_", "systemd", "url", "args"),
    [
        pytest.param(
            InstallRequest(installer="auto"),
            True,
            f"https://releases.nixos.org/nix/nix-{DEFAULT_NIX_VERSION}/install",
            ("--daemon", "--yes", "--no-channel-add", "--nix-extra-conf-file", "/w/nix.conf"),
            id="auto-multi-user-with-systemd",
        ),
        pytest.param(
            InstallRequest(installer="upstream", version="2.24.10"),
            False,
            "https://releases.nixos.org/nix/nix-2.24.10/install",
            ("--no-daemon", "--yes", "--no-channel-add", "--nix-extra-conf-file", "/w/nix.conf"),
            id="upstream-single-user-without-systemd",
        ),
        pytest.param(
            InstallRequest(installer="upstream", url="https://mirror.example/install"),
            False,
            "https://mirror.example/install",
            ("--no-daemon", "--yes", "--no-channel-add", "--nix-extra-conf-file", "/w/nix.conf"),
            id="url-override",
        ),
        pytest.param(
            InstallRequest(installer="determinate"),
            True,
            "https://install.determinate.systems/nix",
            ("install", "linux", "--no-confirm", "--init", "systemd", "--extra-conf", "a = b\n"),
            id="determinate-systemd",
        ),
        pytest.param(
            InstallRequest(installer="determinate", version="3.11.2"),
            False,
            "https://install.determinate.systems/nix/tag/v3.11.2",
            ("install", "linux", "--no-confirm", "--init", "none", "--extra-conf", "a = b\n"),
            id="determinate-pinned-no-init",
        ),
    ],
)
def test_install_plan_picks_url_and_mode(
    request_: InstallRequest, systemd: bool, url: str, args: tuple[str, ...]
) -> None:
    plan = plan_install(
        request_, systemd=systemd, conf_file=Path("/w/nix.conf"), conf_text="a = b\n"
    )
    assert (plan.url, plan.args, plan.multi_user) == (url, args, systemd)


def test_install_plan_refuses_installer_none() -> None:
    with pytest.raises(ValueError, match="never installs"):
        plan_install(
            InstallRequest(installer="none"), systemd=False, conf_file=Path("/x"), conf_text=""
        )


@pytest.mark.parametrize(
    ("user", "trusted_line"),
    [
        pytest.param("runner", "trusted-users = root runner", id="job-user-trusted"),
        pytest.param("root", "trusted-users = root", id="root-only-once"),
    ],
)
def test_installer_conf_trusts_the_job_user(user: str, trusted_line: str) -> None:
    text = installer_conf(user)
    assert trusted_line in text.splitlines()
    assert "experimental-features = nix-command flakes" in text.splitlines()


def test_nix_is_found_on_path_before_profile_dirs(tmp_path: Path) -> None:
    on_path = fake_nix_bin(tmp_path / "a")
    profile = fake_nix_bin(tmp_path / "b")
    assert find_nix(f"/nonexistent:{on_path}", [profile]) == (on_path / "nix", True)
    assert find_nix("/nonexistent", [tmp_path / "none", profile]) == (profile / "nix", False)


def test_a_non_executable_nix_is_not_nix(tmp_path: Path) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    (bin_dir / "nix").chmod(0o644)
    assert find_nix(str(bin_dir), []) is None


# ---------------------------------------------------------------------------------------------
# Detection with a fake runner


def test_detection_without_nix_returns_none_and_runs_nothing(tmp_path: Path) -> None:
    runner = FakeRunner()
    got = detect_nix(
        path_env=str(tmp_path), env={}, runner=runner, extra_locations=[tmp_path / "p"], user=RUNNER
    )
    assert got is None
    assert runner.calls == []


@pytest.mark.parametrize(
    ("config", "state_writable", "socket", "daemon", "trusted"),
    [
        pytest.param(
            {"store": "auto", "trusted-users": ["root"]}, True, False, False, True, id="single-user"
        ),
        pytest.param(
            {"store": "daemon", "trusted-users": ["root", "runner"]},
            False,
            True,
            True,
            True,
            id="daemon-trusted",
        ),
        pytest.param(
            {"store": "auto", "trusted-users": ["root"]},
            False,
            True,
            True,
            False,
            id="daemon-untrusted",
        ),
        pytest.param(
            {"store": "auto", "trusted-users": ["root", "@docker"]},
            False,
            True,
            True,
            True,
            id="daemon-group",
        ),
    ],
)
def test_detection_reports_daemon_and_trust(
    *,
    tmp_path: Path,
    config: dict[str, object],
    state_writable: bool,
    socket: bool,
    daemon: bool,
    trusted: bool,
) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    runner = FakeRunner(fake_nix_handlers(config=config))
    got = detect_nix(
        path_env=str(bin_dir),
        env={"HOME": str(tmp_path)},
        runner=runner,
        extra_locations=[],
        user=RUNNER,
        host=fake_host(tmp_path, state_writable=state_writable, socket=socket),
    )
    assert got is not None
    assert (got.version, got.daemon, got.trusted, got.on_path) == ("2.8.0", daemon, trusted, True)
    assert got.bin_dir == bin_dir
    assert got.user == "runner"


def test_detection_warns_when_the_daemon_will_refuse_the_user(tmp_path: Path) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    config = {"store": "daemon", "trusted-users": ["root"], "allowed-users": ["@nixusers"]}
    got = detect_nix(
        path_env=str(bin_dir),
        env={},
        runner=FakeRunner(fake_nix_handlers(config=config)),
        extra_locations=[],
        user=RUNNER,
        host=fake_host(tmp_path, state_writable=False, socket=True),
    )
    assert got is not None
    assert any("allowed-users" in w and "refuse" in w for w in got.warnings)


@pytest.mark.parametrize(
    ("answering", "warned"),
    [pytest.param(True, False, id="daemon-answers"), pytest.param(False, True, id="dead-socket")],
)
def test_detection_warns_when_nothing_answers_on_the_daemon_socket(
    tmp_path: Path, answering: bool, warned: bool
) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    got = detect_nix(
        path_env=str(bin_dir),
        env={},
        runner=FakeRunner(fake_nix_handlers(config={"store": "daemon"})),
        extra_locations=[],
        user=ROOT,
        host=fake_host(tmp_path, state_writable=False, socket=True),
        answers=lambda _path: answering,
    )
    assert got is not None
    assert got.daemon
    assert any("nothing answers" in w for w in got.warnings) is warned


def test_detection_asks_a_newer_daemon_whether_it_trusts_us(tmp_path: Path) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    handlers = fake_nix_handlers("nix (Nix) 2.31.2", {"store": "daemon", "trusted-users": ["*"]})
    handlers.append(answer(lambda a: a[1:3] == ("store", "info"), json.dumps({"trusted": 0})))
    runner = FakeRunner(handlers)
    got = detect_nix(
        path_env=str(bin_dir),
        env={},
        runner=runner,
        extra_locations=[],
        user=RUNNER,
        host=fake_host(tmp_path, state_writable=False, socket=True),
    )
    assert got is not None
    assert not got.trusted
    assert "does not trust" in got.trust_reason
    assert any(c[1:3] == ("config", "show") for c in runner.calls)


def test_a_broken_nix_is_a_clear_error(tmp_path: Path) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    runner = FakeRunner([answer(lambda a: a[1:] == ("--version",), "", code=1)])
    with pytest.raises(NixInstallError, match="looks broken"):
        detect_nix(path_env=str(bin_dir), env={}, runner=runner, extra_locations=[], user=RUNNER)


def test_unreadable_configuration_is_a_warning_not_an_error(tmp_path: Path) -> None:
    bin_dir = fake_nix_bin(tmp_path)
    runner = FakeRunner([answer(lambda a: a[1:] == ("--version",), "nix (Nix) 2.8.0\n")])
    got = detect_nix(
        path_env=str(bin_dir),
        env={},
        runner=runner,
        extra_locations=[],
        user=RUNNER,
        host=fake_host(tmp_path, state_writable=True, socket=False),
    )
    assert got is not None
    assert got.store == "auto"
    assert any("assuming the default configuration" in w for w in got.warnings)


# ---------------------------------------------------------------------------------------------
# Detection against the real Debian Nix


@pytest.mark.nix
def test_real_nix_is_detected_as_single_user_and_trusted(tmp_path: Path) -> None:
    require_nix()
    env = NixEnv.create(tmp_path).env()
    got = detect_nix(path_env=env["PATH"], env=env, runner=SubprocessRunner())
    assert got is not None
    assert got.nix == Path(REAL_NIX)
    assert got.on_path
    assert got.version.startswith("2.")
    assert not got.daemon  # NIX_REMOTE=local
    assert got.trusted
    assert got.config["netrc-file"]
    assert got.warnings == ()


@pytest.mark.nix
def test_nix_hidden_from_path_is_found_in_a_profile_dir_and_not_reinstalled(tmp_path: Path) -> None:
    require_nix()
    profile_bin = tmp_path / "profile" / "bin"
    profile_bin.mkdir(parents=True)
    (profile_bin / "nix").symlink_to(REAL_NIX)
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    env = NixEnv.create(tmp_path / "nix").env() | {"PATH": str(empty_bin)}

    def no_http(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"nothing must be downloaded, got {request.url}")

    with httpx.Client(transport=httpx.MockTransport(no_http)) as http:
        boot = NixBootstrapper(
            runner=SubprocessRunner(),
            http=http,
            temp_dir=tmp_path / "runner-temp",
            env=env,
            locations=[profile_bin],
            host=fake_host(tmp_path, state_writable=True, socket=False),
        ).ensure(InstallRequest(installer="auto"))
    assert not boot.installed
    assert not boot.installation.on_path
    assert boot.path_for_later_steps == profile_bin
    assert boot.path_env == f"{profile_bin}{os.pathsep}{empty_bin}"


# ---------------------------------------------------------------------------------------------
# Installing over real HTTP on 127.0.0.1


@dataclass
class Served:
    body: bytes
    status: int = 200
    failures_first: int = 0  # answer 500 this many times first
    truncate: bool = False  # announce more bytes than sent, then close
    hits: int = 0


class InstallerServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        files = self.files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served = files.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                served.hits += 1
                if served.hits <= served.failures_first:
                    self.send_error(503)
                    return
                self.send_response(served.status)
                extra = 100 if served.truncate else 0
                self.send_header("Content-Length", str(len(served.body) + extra))
                self.end_headers()
                self.wfile.write(served.body)
                if served.truncate:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._serving: Serving | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> InstallerServer:
        self._serving = Serving(self.httpd, name="installer")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._serving is not None:
            self._serving.stop()


@dataclass
class Rig:
    """A machine without Nix on PATH, a fake install root, and a local installer server."""

    tmp: Path
    server: InstallerServer
    root: Path
    tools: Path
    env: dict[str, str]
    log: list[str]
    host: HostPaths

    @property
    def profile_bin(self) -> Path:
        return self.root / "nix" / "var" / "nix" / "profiles" / "default" / "bin"

    @property
    def runner_temp(self) -> Path:
        return self.tmp / "runner-temp"

    def bootstrapper(self, http: httpx.Client) -> NixBootstrapper:
        return NixBootstrapper(
            runner=SubprocessRunner(),
            http=http,
            temp_dir=self.runner_temp,
            env=self.env,
            locations=[self.profile_bin],
            host=self.host,
            user=RUNNER,
            download_attempts=3,
            download_wait=tenacity.wait_none(),
        )

    def ensure(self, request: InstallRequest) -> Bootstrap:
        with httpx.Client() as http:
            return self.bootstrapper(http).ensure(request)

    def args(self) -> list[str]:
        return (self.root / "args").read_bytes().decode().split("\0")[:-1]

    def untouched(self) -> bool:
        return (
            sorted(p.name for p in self.root.iterdir()) == []
            and list(self.runner_temp.iterdir()) == []
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sh", "mkdir", "ln", "cp"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    root = tmp_path / "fake-root"
    root.mkdir()
    (tmp_path / "runner-temp").mkdir()
    env = NixEnv.create(tmp_path / "nix").env() | {
        "PATH": str(tools),
        "FAKE_NIX_ROOT": str(root),
        "FAKE_NIX_TARGET": REAL_NIX,
        "ATTIC_TOKEN": "secret-token-value",
    }
    host = fake_host(tmp_path, state_writable=True, socket=False)
    with InstallerServer() as server, captured_log([]) as log:
        yield Rig(tmp=tmp_path, server=server, root=root, tools=tools, env=env, log=log, host=host)


SCRIPT = (FIXTURES / "fake-install.sh").read_bytes()


@pytest.mark.nix
def test_install_chain_downloads_verifies_runs_and_puts_nix_on_path(rig: Rig) -> None:
    require_nix()
    rig.server.files["/install"] = Served(body=SCRIPT)
    request = InstallRequest(
        installer="upstream",
        url=rig.server.url + "/install",
        sha256=hashlib.sha256(SCRIPT).hexdigest(),
    )
    with httpx.Client() as http:
        boot = rig.bootstrapper(http).ensure(request, conf_text="trusted-users = root runner\n")
    assert boot.installed
    assert request.url is not None
    assert any(request.url in line for line in rig.log)  # where it came from is logged
    assert boot.installation.nix == rig.profile_bin / "nix"
    assert boot.installation.version.startswith("2.")
    assert boot.path_for_later_steps == rig.profile_bin
    assert boot.path_env.split(os.pathsep)[0] == str(rig.profile_bin)
    args = rig.args()
    assert args[:3] == ["--no-daemon", "--yes", "--no-channel-add"]
    assert args[3] == "--nix-extra-conf-file"
    assert (rig.root / "extra-conf").read_text() == "trusted-users = root runner\n"
    assert not (rig.root / "secret-leaked").exists()
    assert "fake installer: unpacking Nix" in rig.log
    assert "fake installer: warning on stderr" in rig.log
    assert list(rig.runner_temp.iterdir()) == []  # script and conf file are gone


@pytest.mark.nix
def test_install_chain_uses_the_daemon_mode_when_systemd_runs(rig: Rig) -> None:
    require_nix()
    rig.server.files["/install"] = Served(body=SCRIPT)
    (rig.tmp / "systemd").mkdir()
    boot = rig.ensure(InstallRequest(installer="auto", url=rig.server.url + "/install"))
    assert rig.args()[0] == "--daemon"
    assert boot.installed


@pytest.mark.nix
def test_determinate_installer_gets_its_own_arguments(rig: Rig) -> None:
    require_nix()
    rig.server.files["/nix"] = Served(body=SCRIPT)
    rig.ensure(InstallRequest(installer="determinate", url=rig.server.url + "/nix"))
    assert rig.args() == [
        "install",
        "linux",
        "--no-confirm",
        "--init",
        "none",
        "--extra-conf",
        installer_conf("runner"),
    ]


def test_a_wrong_checksum_runs_nothing_and_changes_nothing(rig: Rig) -> None:
    rig.server.files["/install"] = Served(body=SCRIPT)
    wrong = "0" * 64
    with pytest.raises(NixInstallError) as caught:
        rig.ensure(
            InstallRequest(installer="upstream", url=rig.server.url + "/install", sha256=wrong)
        )
    message = caught.value.message
    assert wrong in message
    assert hashlib.sha256(SCRIPT).hexdigest() in message
    assert "nothing was run" in message
    assert rig.untouched()


@pytest.mark.parametrize(
    ("served", "says", "hits"),
    [
        pytest.param(
            Served(body=SCRIPT, truncate=True), "after 3 attempts", 3, id="truncated-is-retried"
        ),
        pytest.param(
            Served(body=b"<html>captive portal</html>"),
            "not an installer script",
            1,
            id="html-page",
        ),
        pytest.param(Served(body=b""), "not an installer script", 1, id="empty-file"),
        pytest.param(Served(body=b"nope", status=404), "HTTP 404", 1, id="404-not-retried"),
        pytest.param(
            Served(body=b"nope", failures_first=5), "HTTP 503", 3, id="5xx-retried-then-fails"
        ),
    ],
)
def test_a_bad_download_is_a_clear_error_and_leaves_nothing(
    rig: Rig, served: Served, says: str, hits: int
) -> None:
    rig.server.files["/install"] = served
    with pytest.raises(NixInstallError, match=says):
        rig.ensure(InstallRequest(installer="upstream", url=rig.server.url + "/install"))
    assert served.hits == hits
    assert rig.untouched()


@pytest.mark.nix
def test_a_transient_server_error_is_retried(rig: Rig) -> None:
    require_nix()
    served = Served(body=SCRIPT, failures_first=2)
    rig.server.files["/install"] = served
    rig.ensure(InstallRequest(installer="upstream", url=rig.server.url + "/install"))
    assert served.hits == 3
    assert sum("retrying" in line for line in rig.log) == 2


def test_a_failing_installer_is_reported_with_its_output(rig: Rig) -> None:
    rig.server.files["/install"] = Served(body=SCRIPT)
    rig.env["FAKE_INSTALL_EXIT"] = "3"
    with pytest.raises(NixInstallError) as caught:
        rig.ensure(InstallRequest(installer="upstream", url=rig.server.url + "/install"))
    message = caught.value.message
    assert "exited with code 3" in message
    assert "cannot create /nix: permission denied" in message
    assert list(rig.runner_temp.iterdir()) == []


def test_installer_none_without_nix_explains_what_to_do(rig: Rig) -> None:
    with pytest.raises(NixInstallError) as caught:
        rig.ensure(InstallRequest(installer="none"))
    assert "Preinstall Nix" in caught.value.message
    assert "nix-installer: auto" in caught.value.message
    assert rig.untouched()


@pytest.mark.nix
def test_existing_nix_is_reused_and_a_different_version_request_is_a_warning(rig: Rig) -> None:
    require_nix()
    rig.profile_bin.mkdir(parents=True)
    (rig.profile_bin / "nix").symlink_to(REAL_NIX)
    before = sorted(p.name for p in rig.root.iterdir())
    boot = rig.ensure(InstallRequest(installer="upstream", version="2.24.10"))
    assert not boot.installed
    assert rig.server.files == {}
    assert any("nix-version 2.24.10" in w for w in (p.message for p in boot.problems))
    assert sorted(p.name for p in rig.root.iterdir()) == before


# ---------------------------------------------------------------------------------------------
# The real runner


def test_runner_streams_merged_output_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    script = tmp_path / "s.sh"
    script.write_text("echo one\necho two >&2\nexit 4\n")
    got = SubprocessRunner().run(["sh", str(script)], on_line=lines.append)
    assert lines == ["one", "two"]
    assert got.returncode == 4
    assert got.tail() == "one\ntwo"


def test_runner_reports_a_missing_program_as_127() -> None:
    got = SubprocessRunner().run(["/nonexistent/program"])
    assert got.returncode == 127


@pytest.mark.parametrize(
    "stream", [pytest.param(False, id="captured"), pytest.param(True, id="streamed")]
)
def test_runner_stops_a_command_at_its_timeout(stream: bool) -> None:
    got = SubprocessRunner().run(
        ["sleep", "30"], timeout=0.2, on_line=(lambda _l: None) if stream else None
    )
    assert got.returncode != 0
