"""The GitHub-hosted shape: a root nix-daemon and the job as a non-root user with passwordless
sudo, in trusted-users or not (tests/hosted.py). Real Nix, the real action, the Attic double."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.attic_double import AtticDouble
from tests.harness import ActionResult
from tests.hosted import (
    NIX_CONF,
    FileSnapshot,
    HostedRunner,
    RunnerUser,
    UserCode,
    diagnose,
    hosted_runner,
    passwordless_sudo,
    require_hosted,
    run_action_as_user,
    runner_user,
    stage_code,
    sudo_suspended,
)
from tests.nixenv import NixEnv, write_derivations

pytestmark = [pytest.mark.daemon, pytest.mark.nix, pytest.mark.slow]


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    user: RunnerUser
    base: Path  # a directory the user can reach (pytest's tmp_path is root-only)
    code: UserCode
    tool_cache: Path  # the action's venv, built once by the user, like RUNNER_TOOL_CACHE


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    """The runner user with passwordless sudo, and the code it runs."""
    require_hosted()
    base = Path(tempfile.mkdtemp(prefix="nix-job-hosted-"))
    base.chmod(0o755)
    try:
        with runner_user() as user, passwordless_sudo(user):
            yield Machine(
                user=user,
                base=base,
                code=stage_code(base),
                tool_cache=user.own_dir(base / "toolcache"),
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(
    scope="module",
    params=[pytest.param(True, id="trusted"), pytest.param(False, id="untrusted")],
)
def hosted(request: pytest.FixtureRequest, machine: Machine) -> Iterator[HostedRunner]:
    before = FileSnapshot.take(NIX_CONF)
    with hosted_runner(
        trusted=request.param,
        base=machine.base,
        tool_cache=machine.tool_cache,
        code=machine.code,
        user=machine.user,
    ) as h:
        yield h
    after = FileSnapshot.take(NIX_CONF)
    assert after == before, f"{NIX_CONF} was not restored: {before} became {after}"


@pytest.fixture
def workspace(hosted: HostedRunner) -> Path:
    return hosted.workdir("workspace")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        yield d


@pytest.fixture
def root_nix(tmp_path: Path) -> NixEnv:
    """Root's own single-user Nix, for seeding caches (never the daemon)."""
    return NixEnv.create(tmp_path / "nix")


def seed(double: AtticDouble, cache: str, nix: NixEnv, directory: Path) -> str:
    """A fresh path that is in ``cache`` but not in /nix/store: built, copied, deleted."""
    (path,) = write_derivations(directory, prefix="nixjob-hosted-seed").build(nix)
    nar = nix.dump(path)
    refs = [r for r in nix.query("--references", path) if r != path]
    nix.run(["nix-store", "--delete", path])
    assert not Path(path).exists()
    double.put_path(cache, store_path=path, nar=nar, references=refs)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonState:
    """What a run must leave as it found: nix.conf, the settings a daemon reads, the daemon."""

    conf: bytes | None
    config: Mapping[str, str]
    listener: int | None

    @classmethod
    def take(cls, hosted: HostedRunner) -> DaemonState:
        return cls(
            conf=FileSnapshot.take(NIX_CONF).data,
            config=hosted.show_config(),
            listener=hosted.daemon.listener(),
        )


def assert_restored(hosted: HostedRunner, before: DaemonState, result: ActionResult) -> None:
    """nix.conf byte for byte, the same effective settings, the daemon serving (restarted back
    when nix-job had restarted it), and no netrc left in RUNNER_TEMP."""
    why = diagnose(hosted, result)
    assert FileSnapshot.take(NIX_CONF).data == before.conf, why
    assert hosted.show_config() == before.config, why
    assert hosted.daemon.answers(), why
    now = hosted.daemon.listener()
    if hosted.trusted:
        assert now == before.listener, "a trusted user's settings need no daemon restart\n" + why
    else:
        assert now not in (None, before.listener), "the daemon was not restarted back\n" + why
    assert not list(result.runner_temp.rglob("netrc")), why


def store_label(hosted: HostedRunner) -> str:
    return "daemon (trusted user)" if hosted.trusted else "daemon (untrusted user)"


# --- the test bed itself --------------------------------------------------------------------


def test_the_command_runs_as_the_runner_user_and_the_daemon_builds(
    hosted: HostedRunner, workspace: Path
) -> None:
    drvs = write_derivations(workspace, prefix="nixjob-hosted-build")
    hosted.user.chown(drvs.file)
    command = (
        "id -un > whoami\n"
        "nix store ping > ping 2>&1\n"
        f"nix-build --no-out-link {drvs.file.name} > out\n"
    )
    result = run_action_as_user(
        hosted,
        workspace=workspace,
        inputs={"command": command, "attic-enabled": "false"},
        event="pull_request",
    )
    assert result.exit_code == 0, diagnose(hosted, result)
    assert (workspace / "whoami").read_text().strip() == hosted.user.name
    assert "Store URL: daemon" in (workspace / "ping").read_text()
    out = Path((workspace / "out").read_text().strip())
    assert out.is_dir(), diagnose(hosted, result)
    assert out.stat().st_uid == 0, "the daemon (root) owns what it builds"
    summary = result.step("run").summary
    assert store_label(hosted) in summary, summary + diagnose(hosted, result)
    assert result.runner_temp.stat().st_uid == hosted.user.uid


def test_extra_conf_reaches_the_daemon_and_everything_is_restored_after(
    hosted: HostedRunner, workspace: Path, double: AtticDouble, root_nix: NixEnv, tmp_path: Path
) -> None:
    """extra-conf substituters are the daemon's business: the daemon must substitute."""
    cache = double.create_cache("pub", public=True)
    path = seed(double, "pub", root_nix, tmp_path / "seed")
    listener_before = hosted.daemon.listener()
    config_before = hosted.show_config()
    result = run_action_as_user(
        hosted,
        workspace=workspace,
        inputs={
            "command": f"nix-store --realise {path}",
            "attic-enabled": "false",
            "extra-conf": (
                f"extra-substituters = {double.substituter_url('pub')}\n"
                f"extra-trusted-public-keys = {cache.public_key}\n"
            ),
        },
        event="pull_request",
    )
    assert result.exit_code == 0, diagnose(hosted, result)
    assert Path(path).is_dir()
    fetched = [r for r in double.requests if r.method == "GET" and r.path.endswith(".nar")]
    assert fetched, diagnose(hosted, result)
    # Afterwards: nix.conf byte for byte, the daemon serving with its old settings.
    assert NIX_CONF.read_bytes() == hosted.nix_conf.data
    assert hosted.show_config() == config_before
    assert hosted.daemon.answers()
    if hosted.trusted:
        assert hosted.daemon.listener() == listener_before, "a trusted user needs no restart"
    else:
        assert hosted.daemon.listener() not in (None, listener_before), (
            "nix-job changed nix.conf, so it must have restarted the daemon back"
        )


def test_without_sudo_only_the_trusted_user_reaches_the_daemon_and_the_rest_is_named(
    hosted: HostedRunner, workspace: Path, double: AtticDouble, root_nix: NixEnv, tmp_path: Path
) -> None:
    """No sudo: a trusted user's NIX_CONFIG still reaches the daemon; an untrusted user's is
    ignored by the daemon, and the action says which settings."""
    cache = double.create_cache("pub", public=True)
    path = seed(double, "pub", root_nix, tmp_path / "seed")
    listener_before = hosted.daemon.listener()
    with sudo_suspended():
        result = run_action_as_user(
            hosted,
            workspace=workspace,
            inputs={
                "command": f"nix-store --realise {path}",
                "attic-enabled": "false",
                "extra-conf": (
                    f"extra-substituters = {double.substituter_url('pub')}\n"
                    f"extra-trusted-public-keys = {cache.public_key}\n"
                ),
            },
            event="pull_request",
        )
    assert NIX_CONF.read_bytes() == hosted.nix_conf.data
    assert hosted.daemon.listener() == listener_before, "without sudo nothing is restarted"
    warnings = [a.message for a in result.annotations_of("warning")]
    if hosted.trusted:
        assert result.exit_code == 0, diagnose(hosted, result)
        assert Path(path).is_dir()
        assert not any("ignored" in w for w in warnings), diagnose(hosted, result)
        return
    assert result.exit_code != 0, diagnose(hosted, result)
    assert not Path(path).exists()
    ignored = [w for w in warnings if "the daemon ignored" in w]
    assert len(ignored) == 1, diagnose(hosted, result)
    assert "extra-substituters, extra-trusted-public-keys" in ignored[0]
    assert f"user {hosted.user.name} is not trusted" in ignored[0]
    assert f"ignoring untrusted substituter '{double.substituter_url('pub')}'" in result.output
    assert not [r for r in double.requests if r.path.endswith(".nar")]


# --- the cache through the daemon -----------------------------------------------------------

CACHE = "team"


def cache_inputs(double: AtticDouble, command: str, **more: str) -> dict[str, str]:
    return {"command": command, "attic-server": double.url, "attic-cache": CACHE, **more}


def test_a_pull_request_substitutes_from_the_private_cache_through_the_daemon(
    hosted: HostedRunner, workspace: Path, double: AtticDouble, root_nix: NixEnv, tmp_path: Path
) -> None:
    double.create_cache(CACHE)  # private: the daemon needs the netrc
    path = seed(double, CACHE, root_nix, tmp_path / "seed")
    token = double.make_token({CACHE: "r"}, sub="pull-request")
    before = DaemonState.take(hosted)
    command = f"cat /etc/nix/nix.conf > conf-during\nnix-store --realise {path}\n"
    result = run_action_as_user(
        hosted,
        workspace=workspace,
        inputs=cache_inputs(double, command),
        event="pull_request",
        env={"ATTIC_TOKEN": token},
        secrets=(token,),
    )
    why = diagnose(hosted, result)
    assert result.exit_code == 0, why
    assert Path(path).is_dir(), why
    assert result.outputs["cache-push"] == "false", why
    assert "ignoring untrusted" not in result.output, why
    reads = [r for r in double.requests if r.path.endswith((".narinfo", ".nar"))]
    assert {r.path.rsplit(".", 1)[-1] for r in reads} >= {"narinfo", "nar"}, why
    assert all(r.subject == "pull-request" and r.status == 200 for r in reads), why
    assert not double.write_requests(), why
    conf_during = (workspace / "conf-during").read_text()
    assert token not in conf_during
    if hosted.trusted:
        assert conf_during.encode() == before.conf, "a trusted user's settings need no file"
    else:
        assert f"extra-substituters = {double.substituter_url(CACHE)}" in conf_during, why
        assert "netrc-file = " in conf_during, why
        assert "Wrote nix-job's settings to /etc/nix/nix.conf" in result.output, why
    assert not result.leaks(token), why
    assert_restored(hosted, before, result)


def test_a_default_branch_push_publishes_what_the_daemon_builds_while_it_builds(
    hosted: HostedRunner, workspace: Path, double: AtticDouble, root_nix: NixEnv
) -> None:
    """--no-out-link leaves no result link for the final push: only the store watcher, which
    runs as the user and sees the daemon's paths, can find the outputs."""
    double.create_cache(CACHE)
    drvs = write_derivations(workspace, count=3, chain=True, sleep_s=1.5, prefix="nixjob-hosted")
    hosted.user.chown(drvs.file)
    outputs = set(drvs.out_paths(root_nix).values())
    token = double.make_token({CACHE: "rw"}, sub="main")
    before = DaemonState.take(hosted)
    command = f"nix-build --no-out-link {drvs.file.name} -A d2 > out\ndate +%s.%N > build-ended\n"
    result = run_action_as_user(
        hosted,
        workspace=workspace,
        inputs=cache_inputs(double, command, **{"push-cache": "true"}),
        event="push",
        env={"ATTIC_TOKEN": token},
        secrets=(token,),
    )
    why = diagnose(hosted, result)
    assert result.exit_code == 0, why
    assert result.outputs["cache-push"] == "true", why
    built = Path((workspace / "out").read_text().strip())
    assert str(built) in outputs
    assert built.stat().st_uid == 0, "the daemon built it"
    stored = {o.store_path for o in double.objects(CACHE)}
    assert outputs <= stored, why
    assert int(result.outputs["paths-pushed"]) >= 3, why
    uploads = [r for r in double.upload_requests() if r.status == 200]
    assert all(r.subject == "main" for r in uploads), why
    build_ended = float((workspace / "build-ended").read_text())
    assert min(r.ended_at for r in uploads) < build_ended, "nothing was uploaded during the build"
    assert not result.leaks(token), why
    assert_restored(hosted, before, result)


def test_without_sudo_an_untrusted_user_is_told_the_daemon_ignored_the_cache(
    hosted: HostedRunner, workspace: Path, double: AtticDouble, root_nix: NixEnv, tmp_path: Path
) -> None:
    """The cache read path without sudo: trusted still substitutes; untrusted is named."""
    double.create_cache(CACHE)
    path = seed(double, CACHE, root_nix, tmp_path / "seed")
    token = double.make_token({CACHE: "r"})
    before = DaemonState.take(hosted)
    with sudo_suspended():
        result = run_action_as_user(
            hosted,
            workspace=workspace,
            inputs=cache_inputs(double, f"nix-store --realise {path}"),
            event="pull_request",
            env={"ATTIC_TOKEN": token},
            secrets=(token,),
        )
    why = diagnose(hosted, result)
    assert FileSnapshot.take(NIX_CONF).data == before.conf, why
    assert hosted.daemon.listener() == before.listener, "without sudo nothing is restarted"
    assert not list(result.runner_temp.rglob("netrc")), why
    assert not result.leaks(token), why
    ignored = [a.message for a in result.annotations_of("warning") if "daemon ignored" in a.message]
    if hosted.trusted:
        assert result.exit_code == 0, why
        assert Path(path).is_dir(), why
        assert not ignored, why
        return
    assert result.exit_code != 0, why
    assert not Path(path).exists(), why
    assert len(ignored) == 1, why
    for setting in ("extra-substituters", "extra-trusted-public-keys", "netrc-file"):
        assert setting in ignored[0], why
    assert f"ignoring untrusted substituter '{double.substituter_url(CACHE)}'" in result.output
    assert not [r for r in double.requests if r.path.endswith(".nar")], why


def test_no_ancestor_of_the_command_holds_a_token_as_the_runner_user(
    hosted: HostedRunner, workspace: Path, double: AtticDouble
) -> None:
    """As the non-root runner user: nix-job's environment holds no token (re-exec), and its
    /proc entries are not even readable to the user (non-dumpable)."""
    from tests.e2e.test_security import ANCESTRY, GITHUB_TOKEN, forms  # noqa: PLC0415

    double.create_cache(CACHE)
    token = double.make_token({CACHE: "rw"})
    result = run_action_as_user(
        hosted,
        workspace=workspace,
        inputs={**cache_inputs(double, ANCESTRY), "github-token": GITHUB_TOKEN},
        event="pull_request",
        env={"ATTIC_TOKEN": token},
        secrets=(token, GITHUB_TOKEN),
    )
    why = diagnose(hosted, result)
    assert result.exit_code == 0, why
    seen = (workspace / "ancestry").read_text()
    for secret in (*forms(token), GITHUB_TOKEN):
        assert secret not in seen, f"an ancestor's environment holds a secret:\n{seen}"
    parent = seen.split("== pid ", 2)[1].split("\n", 1)[0]
    assert f"== readable {parent}" not in seen, "nix-job (non-dumpable) must be unreadable"
