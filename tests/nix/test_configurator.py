"""nix.conf settings: rendering, marked blocks, delivery through NIX_CONFIG or the system file,
daemon restarts (recorded by a fake runner), verification with the real Nix, and restoration."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.core.errors import NixConfigError
from nix_job.nix.configurator import AppliedConfig, NixConfigurator
from nix_job.nix.daemon import ProcLiveness, SystemPaths, UnixSocketProbe, current_owner
from nix_job.nix.facts import NixInstallation, parse_config
from nix_job.nix.settings import (
    MARK_BEGIN,
    MARK_END,
    BlockHeader,
    BlockOwner,
    add_block,
    append_nix_config,
    parse_header,
    plan_delivery,
    render_conf,
    strip_blocks,
    verify_settings,
)
from nix_job.nix.system_file import directory_lock
from tests.fakes.clock import FakeClock
from tests.fakes.process import SUDO, FakeProbe, SystemFake
from tests.nixenv import NixEnv, require_nix

REAL_NIX = shutil.which("nix") or "/usr/bin/nix"
CACHE_LINES = (
    ("extra-substituters", "http://127.0.0.1:9/demo"),
    ("extra-trusted-public-keys", "demo:9Zbo3Zn5kUXbIDh7gU5Bm6D0NqyS9ARXwKXWMDwFAqo="),
    ("netrc-file", "/tmp/runner-temp/nix-job-x/netrc"),
)
ORIGINAL = (
    b"# see https://nixos.org/nix/manual/#sec-conf-file\nsandbox = false\ntrusted-users = root\n"
)


# ---------------------------------------------------------------------------------------------
# Pure rendering


@pytest.mark.parametrize(
    ("items", "text"),
    [
        pytest.param(
            [("extra-substituters", "http://a http://b")],
            "extra-substituters = http://a http://b\n",
            id="pair",
        ),
        pytest.param(
            ["max-jobs=4", "  # why  ", "", "cores = 2  "],
            "max-jobs = 4\n# why\ncores = 2\n",
            id="lines",
        ),
        pytest.param(["a = 1\nb = 2\n"], "a = 1\nb = 2\n", id="multi-line-string"),
        pytest.param([("substituters", "")], "substituters =\n", id="empty-value"),
        pytest.param([], "", id="nothing"),
    ],
)
def test_render_conf_writes_one_setting_per_line(
    items: list[tuple[str, str] | str], text: str
) -> None:
    assert render_conf(items) == text


@pytest.mark.parametrize(
    ("items", "says"),
    [
        pytest.param(
            [("bad name", "x")], "'bad name' is not a nix.conf setting name", id="bad-name"
        ),
        pytest.param(
            [("a", "x\nb = y")], "value of a contains a line break", id="newline-in-value"
        ),
        pytest.param([("a", "x\0")], "value of a contains a line break or another", id="nul"),
        pytest.param([("a", "x\x1bhidden")], "another control character", id="escape-in-value"),
        pytest.param([("a", "x\u2028b = y")], "another control character", id="line-separator"),
        pytest.param([("a", "# END nix-job")], "block marker text", id="end-marker-in-value"),
        pytest.param(["# END nix-job"], "looks like nix-job's own block marker", id="end-marker"),
        pytest.param(
            ["# begin  NIX-JOB 1-1"], "looks like nix-job's own block marker", id="begin-marker"
        ),
        pytest.param(["include /etc/other.conf"], "is not a `name = value` setting", id="include"),
        pytest.param(["just words"], "is not a `name = value` setting", id="no-equals"),
        pytest.param(["a = 1\0"], "NUL byte", id="nul-in-line"),
    ],
)
def test_render_conf_refuses_what_is_not_a_setting(
    items: list[tuple[str, str] | str], says: str
) -> None:
    with pytest.raises(NixConfigError, match="nothing was applied") as caught:
        render_conf(items)
    assert says in caught.value.message


def test_render_conf_lists_every_problem_at_once() -> None:
    with pytest.raises(NixConfigError) as caught:
        render_conf(["oops", ("", "x"), "fine = 1"])
    assert caught.value.message.startswith("2 invalid nix.conf setting(s)")


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        pytest.param(None, "a = 1\n", id="none"),
        pytest.param("", "a = 1\n", id="empty"),
        pytest.param("sandbox = false", "sandbox = false\na = 1\n", id="no-trailing-newline"),
        pytest.param("x = 1\ny = 2\n\n", "x = 1\ny = 2\na = 1\n", id="kept-and-appended"),
    ],
)
def test_nix_config_from_the_runner_is_kept_and_ours_appended(
    existing: str | None, expected: str
) -> None:
    assert append_nix_config(existing, "a = 1\n") == expected


STALE = f"{MARK_BEGIN} 111-1 (temporary: removed when this job ends)\nextra-substituters = http://old\n{MARK_END}\n"


@pytest.mark.parametrize(
    ("text", "clean", "ids", "unterminated"),
    [
        pytest.param("a = 1\n", "a = 1\n", (), False, id="no-block"),
        pytest.param(
            "a = 1\n" + STALE + "b = 2\n", "a = 1\nb = 2\n", ("111-1",), False, id="one-block"
        ),
        pytest.param(
            STALE + STALE.replace("111-1", "222-3"), "", ("111-1", "222-3"), False, id="two-blocks"
        ),
        pytest.param(
            "a = 1\n" + STALE.replace(MARK_END + "\n", ""),
            "a = 1\n",
            ("111-1",),
            True,
            id="unterminated",
        ),
    ],
)
def test_stale_blocks_are_found_and_removed(
    text: str, clean: str, ids: tuple[str, ...], unterminated: bool
) -> None:
    scan = strip_blocks(text)
    assert (scan.text, scan.run_ids, scan.unterminated) == (clean, ids, unterminated)


lines_without_markers = st.lists(
    st.text(
        alphabet=st.characters(
            blacklist_categories=["Cs"],
            blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
        ),
        max_size=30,
    ).filter(lambda line: not line.strip().startswith("# BEGIN nix-job")),
    max_size=8,
)


@given(lines_without_markers)
def test_adding_then_stripping_a_block_gives_the_file_back(lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    marked = add_block(text, run_id="42-1", body="extra-substituters = http://x\n")
    assert strip_blocks(marked).text == text
    assert marked.startswith(text)


@pytest.mark.parametrize(
    ("settings", "effective", "problem"),
    [
        pytest.param(
            [("extra-substituters", "http://a")],
            {"substituters": "https://cache.nixos.org/ http://a"},
            None,
            id="extra-present",
        ),
        pytest.param(
            [("extra-substituters", "http://a")],
            {"substituters": "http://other"},
            "a plain `substituters =`",
            id="extra-replaced",
        ),
        pytest.param(
            [("netrc-file", "/x/netrc")], {"netrc-file": "/x/netrc"}, None, id="netrc-same"
        ),
        pytest.param(
            [("netrc-file", "/x/netrc")],
            {"netrc-file": "/etc/nix/netrc"},
            "/etc/nix/netrc",
            id="netrc-other",
        ),
        pytest.param([("max-jobs", "4")], {"max-jobs": "1"}, None, id="not-checked"),
    ],
)
def test_verification_names_settings_that_are_not_in_effect(
    settings: list[tuple[str, str]], effective: dict[str, str], problem: str | None
) -> None:
    problems = verify_settings(settings, effective)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]


# ---------------------------------------------------------------------------------------------
# Fakes for the system side


def warning_texts(applied: AppliedConfig) -> tuple[str, ...]:
    return tuple(p.message for p in applied.problems)


def effective(machine: Machine, applied: AppliedConfig) -> dict[str, str]:
    """The settings the real Nix sees with the applied environment (`nix show-config`)."""
    done = subprocess.run(
        ["nix", "show-config", "--json", "--extra-experimental-features", "nix-command"],
        env={**machine.env, **applied.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return parse_config(done.stdout)


def installation(*, daemon: bool, trusted: bool, user: str = "runner") -> NixInstallation:
    return NixInstallation(
        nix=Path(REAL_NIX),
        bin_dir=Path(REAL_NIX).parent,
        version="2.8.0",
        version_line="nix (Nix) 2.8.0",
        on_path=True,
        store="auto",
        daemon=daemon,
        daemon_reason="test",
        user=user,
        trusted=trusted,
        trust_reason="test",
        config=MappingProxyType({}),
    )


@dataclass
class Machine:
    tmp: Path
    paths: SystemPaths
    probe: FakeProbe
    runner: SystemFake
    clock: FakeClock
    env: dict[str, str]

    @property
    def conf(self) -> Path:
        return self.paths.nix_conf

    def configurator(self, *, is_root: bool = False, run_id: str = "999-1") -> NixConfigurator:
        return NixConfigurator(
            runner=self.runner,
            temp_dir=self.tmp / "runner-temp",
            run_id=run_id,
            env=self.env,
            is_root=is_root,
            sudo=SUDO,
            paths=self.paths,
            probe=self.probe,
            clock=self.clock,
            sleep=self.clock.sleep,
            daemon_timeout_s=5.0,
        )

    def runner_temp_is_empty(self) -> bool:
        return list((self.tmp / "runner-temp").iterdir()) == []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    etc = tmp_path / "etc-nix"
    etc.mkdir()
    (etc / "nix.conf").write_bytes(ORIGINAL)
    (etc / "nix.conf").chmod(0o640)
    systemd = tmp_path / "run-systemd"
    systemd.mkdir()
    (tmp_path / "runner-temp").mkdir()
    paths = SystemPaths(
        nix_conf=etc / "nix.conf",
        daemon_socket=tmp_path / "daemon-socket",
        systemd_dir=systemd,
        store_dir=tmp_path / "store",
        proc_dir=tmp_path / "proc",
    )
    probe = FakeProbe()
    # The real Nix reads this directory's nix.conf, like the client of a daemon reads /etc/nix.
    # No `substituters =` in the runner's NIX_CONFIG here: it would replace the file's list.
    env = NixEnv.create(tmp_path / "nix").env() | {
        "NIX_CONFIG": "experimental-features = nix-command\n",
        "NIX_CONF_DIR": str(etc),
        "RUNNER_TRACKING_ID": "github_1234",
    }
    return Machine(
        tmp=tmp_path,
        paths=paths,
        probe=probe,
        runner=SystemFake(probe=probe),
        clock=FakeClock(),
        env=env,
    )


# ---------------------------------------------------------------------------------------------
# NIX_CONFIG delivery


@pytest.mark.nix
def test_single_user_settings_go_through_nix_config_and_take_effect(machine: Machine) -> None:
    require_nix()
    applied = machine.configurator(is_root=True).apply(
        CACHE_LINES, installation=installation(daemon=False, trusted=True)
    )
    assert applied.mode == "env"
    nix_config = applied.env["NIX_CONFIG"]
    assert nix_config.startswith(machine.env["NIX_CONFIG"])  # the runner's value comes first
    assert nix_config.endswith(render_conf(CACHE_LINES))
    assert warning_texts(applied) == ()
    assert "http://127.0.0.1:9/demo" in effective(machine, applied)["substituters"].split()
    assert effective(machine, applied)["netrc-file"] == "/tmp/runner-temp/nix-job-x/netrc"
    assert machine.conf.read_bytes() == ORIGINAL
    assert applied.conf_path is None
    applied.restore()
    applied.restore()
    assert machine.conf.read_bytes() == ORIGINAL


@pytest.mark.nix
def test_a_trusted_daemon_user_needs_no_file_and_no_restart(machine: Machine) -> None:
    require_nix()
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=True)
    )
    assert applied.mode == "env"
    assert machine.runner.daemon_calls() == []
    assert not any(c[:2] == SUDO for c in machine.runner.calls)
    assert machine.conf.read_bytes() == ORIGINAL


def test_a_setting_replaced_later_is_reported(machine: Machine) -> None:
    machine.runner.show_config = lambda: '{"substituters": {"value": ["https://only.example"]}}'
    applied = machine.configurator(is_root=True).apply(
        CACHE_LINES, installation=installation(daemon=False, trusted=True)
    )
    assert any(
        "extra-substituters = http://127.0.0.1:9/demo` is not in effect" in w
        for w in warning_texts(applied)
    )


# ---------------------------------------------------------------------------------------------
# System file delivery (daemon, untrusted user)


@pytest.mark.nix
def test_untrusted_daemon_user_gets_a_marked_block_and_restore_is_byte_exact(
    machine: Machine,
) -> None:
    require_nix()
    lines = [*CACHE_LINES, ("access-tokens", "github.com=ghp_secret")]
    applied = machine.configurator().apply(
        lines, installation=installation(daemon=True, trusted=False)
    )

    assert applied.mode == "system-file"
    during = machine.conf.read_text()
    assert during.startswith(ORIGINAL.decode())
    assert f"{MARK_BEGIN} 999-1" in during
    assert "extra-substituters = http://127.0.0.1:9/demo" in during
    assert "ghp_secret" not in during  # secrets never reach the file ...
    assert "access-tokens = github.com=ghp_secret" in applied.env["NIX_CONFIG"]  # ... only the env
    assert warning_texts(applied) == ()  # the real Nix reads the file: verified in effect
    assert "http://127.0.0.1:9/demo" in effective(machine, applied)["substituters"].split()
    assert machine.conf.stat().st_mode & 0o777 == 0o640

    applied.restore()
    assert machine.conf.read_bytes() == ORIGINAL
    assert machine.conf.stat().st_mode & 0o777 == 0o640
    calls_after_first_restore = list(machine.runner.calls)
    applied.restore()
    assert machine.runner.calls == calls_after_first_restore
    assert [c for c in machine.runner.calls if "restart" in c] == [
        (*SUDO, "systemctl", "restart", "nix-daemon.service"),
        (*SUDO, "systemctl", "restart", "nix-daemon.service"),
    ]
    assert all(c[:2] == SUDO for c in machine.runner.calls if c[0] in ("sudo", "install", "mv"))
    assert machine.runner_temp_is_empty()


@pytest.mark.nix
def test_a_runner_nix_config_that_replaces_the_file_settings_is_reported(
    machine: Machine,
) -> None:
    require_nix()
    machine.env["NIX_CONFIG"] = "substituters = https://mirror.example/\n"
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    assert effective(machine, applied)["substituters"] == "https://mirror.example/"
    applied.restore()
    assert any(
        "`extra-substituters = http://127.0.0.1:9/demo` is not in effect" in w and "NIX_CONFIG" in w
        for w in warning_texts(applied)
    )


def scripted_config(machine: Machine) -> None:
    machine.runner.show_config = lambda: '{"substituters": {"value": ["http://127.0.0.1:9/demo"]}}'


def test_restore_runs_after_the_command_fails(machine: Machine) -> None:
    scripted_config(machine)
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    changed = machine.conf.read_bytes() != ORIGINAL

    def job() -> None:
        try:
            raise RuntimeError("command failed")
        finally:
            applied.restore()

    with pytest.raises(RuntimeError, match="command failed"):
        job()
    assert changed
    assert machine.conf.read_bytes() == ORIGINAL


def test_as_root_no_sudo_is_used(machine: Machine) -> None:
    scripted_config(machine)
    applied = machine.configurator(is_root=True).apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    applied.restore()
    assert not any("sudo" in c for c in machine.runner.calls)
    assert ("systemctl", "restart", "nix-daemon.service") in machine.runner.calls
    assert machine.conf.read_bytes() == ORIGINAL


def test_a_missing_nix_conf_is_created_then_removed(machine: Machine) -> None:
    scripted_config(machine)
    machine.conf.unlink()
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    assert machine.conf.read_text().startswith(MARK_BEGIN)
    applied.restore()
    assert not machine.conf.exists()


def test_stale_blocks_of_a_killed_job_are_removed_with_a_warning(machine: Machine) -> None:
    scripted_config(machine)
    machine.conf.write_bytes(ORIGINAL + STALE.encode())
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    assert any("stale nix-job block" in w and "111-1" in w for w in warning_texts(applied))
    during = machine.conf.read_text()
    assert "http://old" not in during
    assert during.count(MARK_BEGIN) == 1
    applied.restore()
    assert machine.conf.read_bytes() == ORIGINAL  # the state before the killed job


def test_stale_blocks_are_removed_even_when_settings_go_through_nix_config(
    machine: Machine,
) -> None:
    scripted_config(machine)
    machine.conf.write_bytes(ORIGINAL + STALE.encode())
    applied = machine.configurator(is_root=True).apply(
        CACHE_LINES, installation=installation(daemon=False, trusted=True)
    )
    assert applied.mode == "env"
    assert any("stale nix-job block" in w and "111-1" in w for w in warning_texts(applied))
    assert machine.conf.read_bytes() == ORIGINAL
    assert machine.runner.daemon_calls() == []  # no daemon to restart
    assert machine.runner_temp_is_empty()


def test_a_hand_started_daemon_is_restarted_by_pid_with_its_own_command_line(
    machine: Machine,
) -> None:
    scripted_config(machine)
    machine.runner.systemd_active = False
    cmdline = machine.paths.proc_dir / "4242" / "cmdline"
    cmdline.parent.mkdir(parents=True)
    cmdline.write_bytes(b"/nix/var/nix/profiles/default/bin/nix-daemon\0--debug\0")
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    applied.restore()

    kills = [c for c in machine.runner.calls if "kill" in c]
    assert kills == [(*SUDO, "kill", "-TERM", "4242"), (*SUDO, "kill", "-TERM", "5001")]
    assert [argv for argv, _ in machine.runner.spawned] == [
        (*SUDO, "/nix/var/nix/profiles/default/bin/nix-daemon", "--debug"),
    ] * 2
    for _, env in machine.runner.spawned:
        assert "RUNNER_TRACKING_ID" not in env  # or the runner would kill it at job end
        assert "NIX_CONFIG" not in env
    assert machine.conf.read_bytes() == ORIGINAL


@pytest.mark.parametrize(
    ("pid", "cmdline", "says"),
    [
        pytest.param(1, None, "PID 1", id="pid-1"),
        pytest.param(None, None, "cannot tell which process", id="no-listener"),
        pytest.param(
            4242, b"/usr/bin/socat\0UNIX-LISTEN:x\0", "not a nix-daemon", id="not-nix-daemon"
        ),
        pytest.param(4242, None, "cannot read the command line", id="no-proc-entry"),
    ],
)
def test_a_daemon_that_cannot_be_restarted_safely_changes_nothing(
    machine: Machine, pid: int | None, cmdline: bytes | None, says: str
) -> None:
    machine.runner.systemd_active = False
    machine.probe.pid = pid
    if cmdline is not None:
        (machine.paths.proc_dir / str(pid)).mkdir(parents=True)
        (machine.paths.proc_dir / str(pid) / "cmdline").write_bytes(cmdline)
    with pytest.raises(NixConfigError, match="nothing was changed") as caught:
        machine.configurator().apply(
            CACHE_LINES, installation=installation(daemon=True, trusted=False)
        )
    assert says in caught.value.message
    assert machine.conf.read_bytes() == ORIGINAL
    assert not any("install" in c for c in machine.runner.calls)
    assert machine.runner_temp_is_empty()


def test_without_sudo_the_ignored_settings_are_named(machine: Machine) -> None:
    scripted_config(machine)
    machine.runner.sudo_ok = False
    applied = machine.configurator().apply(
        [*CACHE_LINES, ("max-jobs", "4")], installation=installation(daemon=True, trusted=False)
    )
    assert applied.mode == "env-ignored"
    assert applied.ignored == ("extra-substituters", "extra-trusted-public-keys", "netrc-file")
    assert any(
        w.startswith(
            "the daemon ignored: extra-substituters, extra-trusted-public-keys, netrc-file "
            "(user runner is not trusted"
        )
        for w in warning_texts(applied)
    )
    assert "extra-substituters" in applied.env["NIX_CONFIG"]
    assert machine.conf.read_bytes() == ORIGINAL


def test_a_daemon_that_does_not_come_back_is_an_error_and_the_file_is_restored(
    machine: Machine, caplog: pytest.LogCaptureFixture
) -> None:
    machine.runner.restart_silence = 10**6
    with pytest.raises(NixConfigError, match="timed out after 5 s waiting for the nix-daemon"):
        machine.configurator().apply(
            CACHE_LINES, installation=installation(daemon=True, trusted=False)
        )
    assert machine.conf.read_bytes() == ORIGINAL
    assert any("restoring" in line for line in caplog.messages)  # the rollback logs its failure


def test_a_slow_daemon_is_waited_for(machine: Machine) -> None:
    scripted_config(machine)
    machine.runner.restart_silence = 3
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    assert machine.probe.probes >= 4
    applied.restore()
    assert machine.conf.read_bytes() == ORIGINAL


def test_a_nix_conf_managed_by_nixos_is_refused(machine: Machine) -> None:
    store_file = machine.paths.store_dir / "abc-nix.conf"
    store_file.parent.mkdir()
    store_file.write_bytes(ORIGINAL)
    machine.conf.unlink()
    machine.conf.symlink_to(store_file)
    with pytest.raises(NixConfigError, match="NixOS or home-manager"):
        machine.configurator().apply(
            CACHE_LINES, installation=installation(daemon=True, trusted=False)
        )
    assert machine.conf.is_symlink()


def test_a_failed_restore_can_be_retried(machine: Machine) -> None:
    scripted_config(machine)
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    machine.runner.restart_silence = 10**6
    with pytest.raises(NixConfigError, match=r"restoring .* failed"):
        applied.restore()
    machine.runner.restart_silence = 0
    machine.probe.silent_after_restart = 0
    applied.restore()
    assert machine.conf.read_bytes() == ORIGINAL
    calls = list(machine.runner.calls)
    applied.restore()  # done now: a third call changes nothing
    assert machine.runner.calls == calls


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param("", id="empty"),
        pytest.param("1 2", id="space"),
        pytest.param("x\n# END nix-job", id="newline"),
    ],
)
def test_a_run_id_that_could_break_the_markers_is_refused(machine: Machine, run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        machine.configurator(run_id=run_id)


def test_applied_config_without_changes_restores_as_a_no_op() -> None:
    applied = AppliedConfig(
        mode="env",
        env={},
        conf_path=None,
        ignored=(),
        problems=(),
    )
    applied.restore()
    applied.restore()


def test_the_socket_probe_sees_a_listener_and_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "socket"
    probe = UnixSocketProbe(timeout_s=1.0)
    assert not probe.answers(path)
    assert probe.listener_pid(path) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(4)
        assert probe.answers(path)
        assert probe.listener_pid(path) == os.getpid()
    assert not probe.answers(path)  # the file stays, nothing listens


def test_stale_blocks_that_cannot_be_removed_are_reported_as_such(machine: Machine) -> None:
    scripted_config(machine)
    machine.runner.sudo_ok = False
    machine.conf.write_bytes(ORIGINAL + STALE.encode())
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=True)
    )
    assert machine.conf.read_bytes() == ORIGINAL + STALE.encode()
    assert any("cannot remove" in w and "111-1" in w for w in warning_texts(applied))
    assert not any(w.startswith("removed") for w in warning_texts(applied))


# ---------------------------------------------------------------------------------------------
# Several runs sharing one daemon: block owners, liveness, restore of a changed file

OURS = BlockOwner(pid=100, boot="boot-a")
OTHER = BlockOwner(pid=200, boot="boot-a")


@dataclass
class FakeLiveness:
    alive: set[int] = field(default_factory=set)
    asked: list[BlockOwner] = field(default_factory=list)

    def __call__(self, owner: BlockOwner) -> bool:
        self.asked.append(owner)
        return owner.pid in self.alive


def block(run_id: str, owner: BlockOwner | None, url: str) -> str:
    return add_block("", run_id=run_id, body=f"extra-substituters = {url}\n", owner=owner)


def run(
    machine: Machine, *, run_id: str, owner: BlockOwner, liveness: FakeLiveness
) -> NixConfigurator:
    return NixConfigurator(
        runner=machine.runner,
        temp_dir=machine.tmp / "runner-temp",
        run_id=run_id,
        env=machine.env,
        is_root=False,
        sudo=SUDO,
        paths=machine.paths,
        probe=machine.probe,
        clock=machine.clock,
        sleep=machine.clock.sleep,
        daemon_timeout_s=5.0,
        owner=owner,
        liveness=liveness,
    )


@pytest.mark.parametrize(
    ("line", "header"),
    [
        pytest.param(
            f"{MARK_BEGIN} 7-1 (temporary: removed when this job ends)",
            BlockHeader(run_id="7-1", owner=None),
            id="old-format",
        ),
        pytest.param(
            f"{MARK_BEGIN} 7-1 pid=42 boot=b-1 (temporary: removed when this job ends)",
            BlockHeader(run_id="7-1", owner=BlockOwner(pid=42, boot="b-1")),
            id="with-owner",
        ),
        pytest.param(
            f"{MARK_BEGIN} 7-1 pid=42 boot=?",
            BlockHeader(run_id="7-1", owner=BlockOwner(pid=42, boot="")),
            id="unknown-boot",
        ),
        pytest.param(
            f"{MARK_BEGIN} 7-1 pid=x", BlockHeader(run_id="7-1", owner=None), id="bad-pid"
        ),
        pytest.param("sandbox = false", None, id="not-a-marker"),
    ],
)
def test_a_begin_marker_names_its_run_and_owner(line: str, header: BlockHeader | None) -> None:
    assert parse_header(line) == header


def test_the_marker_written_is_the_marker_read() -> None:
    first = block("5-2", OURS, "http://a").splitlines()[0]
    assert first.startswith(f"{MARK_BEGIN} 5-2 pid=100 boot=boot-a")
    assert parse_header(first) == BlockHeader(run_id="5-2", owner=OURS)


def test_stripping_keeps_the_blocks_asked_for_in_place() -> None:
    text = "a = 1\n" + block("1-1", OTHER, "http://live") + "b = 2\n" + block("2-1", None, "x")
    scan = strip_blocks(text, keep=lambda h: h.owner == OTHER)
    assert scan.text == "a = 1\n" + block("1-1", OTHER, "http://live") + "b = 2\n"
    assert (scan.run_ids, scan.kept, scan.unterminated) == (("2-1",), ("1-1",), False)


@pytest.mark.parametrize(
    ("existing", "alive", "kept"),
    [
        pytest.param(block("1-1", OTHER, "http://live"), {200}, True, id="live-owner-kept"),
        pytest.param(block("1-1", OTHER, "http://dead"), set(), False, id="dead-owner-removed"),
        pytest.param(block("1-1", None, "http://old"), {200}, False, id="old-format-removed"),
    ],
)
def test_apply_keeps_blocks_of_live_runs_and_removes_the_others(
    machine: Machine, existing: str, alive: set[int], kept: bool
) -> None:
    scripted_config(machine)
    machine.conf.write_bytes(ORIGINAL + existing.encode())
    applied = run(machine, run_id="999-1", owner=OURS, liveness=FakeLiveness(alive=alive)).apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )

    during = machine.conf.read_text()
    assert (existing in during) == kept
    assert during.count(MARK_BEGIN) == (2 if kept else 1)
    assert any("1-1" in w for w in warning_texts(applied)) != kept
    assert any("stale nix-job block" in w for w in warning_texts(applied)) != kept
    applied.restore()
    assert machine.conf.read_bytes() == ORIGINAL + (existing.encode() if kept else b"")


def test_a_live_block_is_kept_when_only_stale_blocks_are_cleaned(machine: Machine) -> None:
    scripted_config(machine)
    live = block("1-1", OTHER, "http://live")
    machine.conf.write_bytes(ORIGINAL + live.encode() + block("2-1", None, "http://old").encode())
    applied = run(machine, run_id="999-1", owner=OURS, liveness=FakeLiveness(alive={200})).apply(
        CACHE_LINES, installation=installation(daemon=False, trusted=True)
    )
    assert any("2-1" in w for w in warning_texts(applied))
    assert machine.conf.read_bytes() == ORIGINAL + live.encode()


OTHER_LATER = block("2-1", OTHER, "http://other")
HAND_EDIT = "max-jobs = 3\n"


@pytest.mark.parametrize(
    ("change", "after"),
    [
        pytest.param(lambda text: text, ORIGINAL.decode(), id="unchanged-byte-for-byte"),
        pytest.param(
            lambda text: text + OTHER_LATER,
            ORIGINAL.decode() + OTHER_LATER,
            id="another-run-added-its-block",
        ),
        pytest.param(
            lambda text: HAND_EDIT + text, HAND_EDIT + ORIGINAL.decode(), id="edited-by-hand"
        ),
        pytest.param(
            lambda text: text.replace(MARK_BEGIN, "# removed", 1).replace(MARK_END, "# x", 1),
            None,
            id="our-block-already-gone",
        ),
    ],
)
def test_restore_takes_out_only_this_runs_block(
    machine: Machine,
    change: Callable[[str], str],
    after: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nix_job")
    scripted_config(machine)
    applied = run(machine, run_id="999-1", owner=OURS, liveness=FakeLiveness()).apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    changed = change(machine.conf.read_text())
    machine.conf.write_text(changed)
    machine.conf.chmod(0o640)
    restarts = len(machine.runner.daemon_calls())

    applied.restore()
    assert machine.conf.read_text() == (changed if after is None else after)
    assert machine.conf.stat().st_mode & 0o777 == 0o640
    assert len(machine.runner.daemon_calls()) == restarts + 1
    assert any("changed during the job" in line for line in caplog.messages) == (
        after is not None and after != ORIGINAL.decode()
    )
    calls = list(machine.runner.calls)
    applied.restore()
    assert machine.runner.calls == calls  # a second restore does nothing
    assert machine.runner_temp_is_empty()


@pytest.mark.parametrize(
    "order",
    [pytest.param(("a", "b"), id="first-in-first-out"), pytest.param(("b", "a"), id="nested")],
)
def test_two_runs_sharing_a_daemon_leave_the_original_file(
    machine: Machine, order: tuple[str, str]
) -> None:
    scripted_config(machine)
    liveness = FakeLiveness(alive={100, 200})
    applied = {
        "a": run(machine, run_id="1-1", owner=OURS, liveness=liveness).apply(
            [("extra-substituters", "http://a")],
            installation=installation(daemon=True, trusted=False),
        ),
        "b": run(machine, run_id="2-1", owner=OTHER, liveness=liveness).apply(
            [("extra-substituters", "http://b")],
            installation=installation(daemon=True, trusted=False),
        ),
    }
    assert not any("stale" in w for w in warning_texts(applied["b"]))
    both = machine.conf.read_text()
    assert "http://a" in both
    assert "http://b" in both

    applied[order[0]].restore()
    left = machine.conf.read_text()
    assert f"http://{order[0]}" not in left
    assert f"http://{order[1]}" in left
    applied[order[1]].restore()
    assert machine.conf.read_bytes() == ORIGINAL


def test_two_runs_with_the_same_run_id_tell_their_blocks_apart_by_pid(machine: Machine) -> None:
    scripted_config(machine)
    liveness = FakeLiveness(alive={100, 200})
    first = run(machine, run_id="local-1", owner=OURS, liveness=liveness).apply(
        [("extra-substituters", "http://a")], installation=installation(daemon=True, trusted=False)
    )
    run(machine, run_id="local-1", owner=OTHER, liveness=liveness).apply(
        [("extra-substituters", "http://b")], installation=installation(daemon=True, trusted=False)
    )
    first.restore()
    left = machine.conf.read_text()
    assert "http://a" not in left
    assert "http://b" in left


@pytest.mark.parametrize(
    ("owner", "proc", "alive"),
    [
        pytest.param(
            BlockOwner(pid=7, boot="b-now"), {"7": b"python\0-m\0nix_job\0"}, True, id="running"
        ),
        pytest.param(
            BlockOwner(pid=7, boot="b-old"), {"7": b"python\0-m\0nix_job\0"}, False, id="other-boot"
        ),
        pytest.param(BlockOwner(pid=7, boot="b-now"), {}, False, id="no-such-pid"),
        pytest.param(BlockOwner(pid=7, boot="b-now"), {"7": b"bash\0"}, False, id="pid-reused"),
        pytest.param(
            BlockOwner(pid=7, boot=""), {"7": b"python\0-m\0nix_job\0"}, True, id="boot-unknown"
        ),
        pytest.param(BlockOwner(pid=7, boot="b-now"), {"7": None}, True, id="cmdline-unreadable"),
    ],
)
def test_an_owner_is_alive_unless_proven_dead(
    tmp_path: Path, owner: BlockOwner, proc: dict[str, bytes | None], alive: bool
) -> None:
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("b-now\n")
    for pid, cmdline in proc.items():
        (tmp_path / pid).mkdir()
        if cmdline is None:
            (tmp_path / pid / "cmdline").mkdir()  # reading it fails with an error other than ENOENT
        else:
            (tmp_path / pid / "cmdline").write_bytes(cmdline)
    assert ProcLiveness(proc_dir=tmp_path)(owner) is alive
    assert current_owner(tmp_path) == BlockOwner(pid=os.getpid(), boot="b-now")


def test_this_process_is_alive_by_the_real_proc() -> None:
    me = current_owner()
    assert me.boot
    assert ProcLiveness()(BlockOwner(pid=me.pid, boot=me.boot)) == (
        b"nix_job" in Path(f"/proc/{me.pid}/cmdline").read_bytes()
    )
    assert not ProcLiveness()(BlockOwner(pid=me.pid, boot="another-boot"))


def test_a_lock_held_by_another_run_times_out_with_an_error(tmp_path: Path) -> None:
    clock = FakeClock()
    with directory_lock(tmp_path, clock=clock, sleep=clock.sleep, timeout_s=1.0):
        with (
            pytest.raises(NixConfigError, match="another nix-job run kept") as caught,
            directory_lock(tmp_path, clock=clock, sleep=clock.sleep, timeout_s=1.0),
        ):
            pass
        assert "hung nix-job process" in caught.value.message
    with directory_lock(tmp_path, clock=clock, sleep=clock.sleep, timeout_s=1.0):
        pass  # released when the holder leaves


# --- the delivery plan (pure) --------------------------------------------------------------------

SUB = ("extra-substituters", "http://c/x")
KEY = ("extra-trusted-public-keys", "c:AAAA")
TOKENS = ("access-tokens", "github.com=ghp_x")
FLAKES = ("experimental-features", "nix-command flakes")


Facts = tuple[bool, bool, bool]  # daemon, trusted, privileged
Expected = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...]]


@pytest.mark.parametrize(
    ("facts", "settings", "expected"),
    [
        pytest.param(
            (False, True, False), (SUB, KEY), ("env", (SUB, KEY), (), ()), id="single-user"
        ),
        pytest.param(
            (True, True, False),
            (SUB, TOKENS),
            ("env", (SUB, TOKENS), (), ()),
            id="trusted-daemon",
        ),
        pytest.param(
            (True, False, True),
            (SUB, KEY, TOKENS),
            ("system-file", (TOKENS,), (SUB, KEY), ()),
            id="untrusted-privileged-tokens-stay-in-the-env",
        ),
        pytest.param(
            (True, False, False),
            (SUB, FLAKES),
            ("env-ignored", (SUB, FLAKES), (), ("extra-substituters",)),
            id="untrusted-unprivileged-names-what-the-daemon-ignores",
        ),
        pytest.param(
            (True, False, True), (TOKENS,), ("env", (TOKENS,), (), ()), id="only-secrets-no-file"
        ),
        pytest.param((True, False, True), (), ("env", (), (), ()), id="nothing-to-deliver"),
    ],
)
def test_the_delivery_plan_puts_each_setting_where_nix_reads_it(
    facts: Facts, settings: tuple[tuple[str, str], ...], expected: Expected
) -> None:
    daemon, trusted, privileged = facts
    plan = plan_delivery(daemon=daemon, trusted=trusted, privileged=privileged, settings=settings)
    assert (plan.mode, plan.env_settings, plan.file_settings, plan.ignored) == expected
    assert all(name != "access-tokens" for name, _ in plan.file_settings)


# --- a killed run's block, with marker text in what it was given (issue 16.4) ------------------


def test_a_stale_block_is_removed_whole_whatever_the_extra_conf_said(machine: Machine) -> None:
    """A run killed before its restore leaves its block; the next run removes all of it. Before
    the fix, an `extra-conf` line `# END nix-job` ended the block early and the settings after
    it (the netrc path among them) outlived every later cleanup."""
    scripted_config(machine)
    netrc = ("netrc-file", "/tmp/runner-temp/nix-job-x/netrc")
    with pytest.raises(NixConfigError, match="block marker"):
        run(machine, run_id="111-1", owner=OTHER, liveness=FakeLiveness()).apply(
            ["a = b", "# END nix-job", "extra-substituters = http://evil"],
            installation=installation(daemon=True, trusted=False),
        )
    assert machine.conf.read_bytes() == ORIGINAL  # refused before anything was written
    killed = run(machine, run_id="111-1", owner=OTHER, liveness=FakeLiveness()).apply(
        ["a = b", "# a comment that is not written", netrc],
        installation=installation(daemon=True, trusted=False),
    )
    del killed  # never restored: the run was killed
    written = machine.conf.read_text()
    assert "a comment" not in written
    run(machine, run_id="222-1", owner=OURS, liveness=FakeLiveness()).apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    ).restore()
    assert machine.conf.read_bytes() == ORIGINAL
    assert netrc[1] not in machine.conf.read_text()


def test_a_cancelled_runs_restore_waits_only_as_long_as_its_budget(machine: Machine) -> None:
    """The runner kills a cancelled job about 10 s after its signal: a restore whose daemon does
    not come back gives up after the budget, not after the usual timeouts (issue 16.7)."""
    scripted_config(machine)
    applied = machine.configurator().apply(
        CACHE_LINES, installation=installation(daemon=True, trusted=False)
    )
    machine.runner.restart_silence = 10**6
    started = machine.clock.now
    with pytest.raises(NixConfigError, match="timed out after 2 s"):
        applied.restore(2.0)
    assert machine.clock.now - started <= 2.5
    timeouts = [t for t in machine.runner.timeouts if t is not None]
    assert timeouts
    assert max(timeouts[-2:]) <= 2.0  # the sudo commands are bounded too
