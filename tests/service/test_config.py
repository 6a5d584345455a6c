"""watch-store configuration: the pure resolution (tables) and every bad configuration giving
exit code 2 with a message that names the flag or variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_job.args import USAGE_EXIT
from nix_job.service.config import ConfigError, Options, ServiceConfig, resolve
from nix_job.service.watch_store import helper_env, main

ENV = {"ATTIC_SERVER": "https://cache.example.com", "ATTIC_CACHE": "main", "ATTIC_TOKEN": "t"}
STATE = {"STATE_DIRECTORY": "/var/lib/nix-job-watch-store"}


def ok(options: Options, env: dict[str, str]) -> ServiceConfig:
    return resolve(options, env)


def test_defaults_come_from_the_environment_systemd_sets() -> None:
    config = ok(Options(), {**ENV, "STATE_DIRECTORY": "/var/lib/a:/var/lib/b"})
    assert config.server == "https://cache.example.com/"
    assert config.cache == "main"
    assert config.token_file is None
    assert config.state_dir == "/var/lib/a"  # the first of several StateDirectory= entries
    assert config.store_dir == config.logical_store_dir == "/nix/store"
    assert config.nix_remote is None
    assert config.status_interval_s == 600.0
    assert config.jobs == 4


def test_flags_win_over_variables() -> None:
    options = Options(server="http://127.0.0.1:8080", cache="other", state_dir="/srv/s")
    config = ok(options, {**ENV, **STATE})
    assert (config.server, config.cache, config.state_dir) == (
        "http://127.0.0.1:8080/",
        "other",
        "/srv/s",
    )


@pytest.mark.parametrize(
    ("store_dir", "nix_remote", "physical", "remote"),
    [
        pytest.param(None, None, "/nix/store", None, id="default"),
        pytest.param(None, "daemon", "/nix/store", "daemon", id="daemon-kept"),
        pytest.param("/nix/store/", None, "/nix/store", None, id="trailing-slash"),
        pytest.param("/srv/b/nix/store", None, "/srv/b/nix/store", "/srv/b", id="chroot-derived"),
        pytest.param("/srv/b/nix/store", "/srv/b/", "/srv/b/nix/store", "/srv/b/", id="agrees"),
        pytest.param(
            "/srv/b/nix/store",
            "local?root=/srv/b",
            "/srv/b/nix/store",
            "local?root=/srv/b",
            id="uri-kept",
        ),
    ],
)
def test_a_chroot_store_is_reached_through_its_root(
    store_dir: str | None, nix_remote: str | None, physical: str, remote: str | None
) -> None:
    env = {**ENV, **STATE, **({"NIX_REMOTE": nix_remote} if nix_remote else {})}
    config = ok(Options(store_dir=store_dir), env)
    assert (config.store_dir, config.nix_remote) == (physical, remote)


def test_the_token_file_replaces_the_variable() -> None:
    env = {k: v for k, v in ENV.items() if k != "ATTIC_TOKEN"}
    assert ok(Options(token_file="/run/credentials/x/attic-token"), {**env, **STATE}).token_file


@pytest.mark.parametrize(
    ("options", "env", "names"),
    [
        pytest.param(Options(), {**STATE, "ATTIC_TOKEN": "t"}, ["ATTIC_SERVER", "ATTIC_CACHE"],
                     id="no-server-no-cache"),
        pytest.param(Options(server="cache.example.com"), {**ENV, **STATE}, ["--server"],
                     id="url-without-scheme"),
        pytest.param(Options(server="ftp://cache.example.com"), {**ENV, **STATE}, ["--server"],
                     id="url-not-http"),
        pytest.param(Options(server="https://user:pw@cache.example.com"), {**ENV, **STATE},
                     ["credentials"], id="url-with-credentials"),
        pytest.param(Options(cache="bad name"), {**ENV, **STATE}, ["--cache", "'bad name'"],
                     id="cache-name"),
        pytest.param(Options(exclude="("), {**ENV, **STATE}, ["--exclude", "not a valid regex"],
                     id="regex"),
        pytest.param(Options(exclude=r"^(\w+)+$"), {**ENV, **STATE}, ["--exclude", "repeats"],
                     id="regex-catastrophic"),
        pytest.param(Options(jobs=0), {**ENV, **STATE}, ["--jobs"], id="jobs-0"),
        pytest.param(Options(jobs=65), {**ENV, **STATE}, ["--jobs"], id="jobs-65"),
        pytest.param(Options(), {**STATE, "ATTIC_SERVER": "http://h", "ATTIC_CACHE": "c"},
                     ["--token-file", "ATTIC_TOKEN"], id="no-token"),
        pytest.param(Options(token_file="/t"), {**ENV, **STATE}, ["both", "--token-file"],
                     id="two-tokens"),
        pytest.param(Options(), ENV, ["--state-dir", "STATE_DIRECTORY"], id="no-state-dir"),
        pytest.param(Options(status_interval=-1), {**ENV, **STATE}, ["--status-interval"],
                     id="status-interval"),
        pytest.param(Options(shutdown_timeout=0), {**ENV, **STATE}, ["--shutdown-timeout"],
                     id="shutdown-timeout"),
        pytest.param(Options(store_dir="relative/nix/store"), {**ENV, **STATE}, ["--store-dir"],
                     id="store-dir-relative"),
        pytest.param(Options(store_dir="/srv/store"), {**ENV, **STATE}, ["--store-dir"],
                     id="store-dir-not-nix-store"),
        pytest.param(Options(store_dir="/srv/b/nix/store"), {**ENV, **STATE, "NIX_REMOTE": "/x"},
                     ["NIX_REMOTE", "--store-dir"], id="store-dir-disagrees"),
        pytest.param(Options(queue_limit=10), {**ENV, **STATE}, ["--queue-limit"], id="queue"),
        pytest.param(Options(catch_up_max=-1), {**ENV, **STATE}, ["--catch-up-max"],
                     id="catch-up-max"),
        pytest.param(Options(catch_up_hours=float("nan")), {**ENV, **STATE},
                     ["--catch-up-hours"], id="catch-up-hours"),
    ],
)  # fmt: skip
def test_each_problem_names_its_flag_or_variable(
    options: Options, env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(options, env)
    text = "\n".join(caught.value.problems)
    for name in names:
        assert name in text


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(Options(jobs=0, exclude="(", shutdown_timeout=-1), {})
    assert len(caught.value.problems) == 7


def test_a_server_url_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(Options(server="https://u:secret@h"), {**ENV, **STATE})
    assert "secret" not in str(caught.value)


# --- the shell: what only the filesystem can tell, all exit 2 --------------------------------


@pytest.fixture
def base(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    store = tmp_path / "root" / "nix" / "store"
    store.mkdir(parents=True)
    token = tmp_path / "token"
    token.write_text("a-token\n")
    argv = ["--store-dir", str(store), "--state-dir", str(tmp_path / "state")]
    argv += ["--token-file", str(token)]
    env = {"ATTIC_SERVER": "http://127.0.0.1:9/", "ATTIC_CACHE": "demo", "PATH": "/nonexistent"}
    return argv, env


def replace(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda a, t: replace(a, "--token-file", str(t / "missing")),
                     "--token-file", id="token-file-missing"),
        pytest.param(lambda a, t: replace(a, "--token-file", str(t)), "is a directory",
                     id="token-file-is-a-directory"),
        pytest.param(lambda a, t: replace(a, "--token-file", str(t / "empty")), "is empty",
                     id="token-file-empty"),
        pytest.param(lambda a, t: replace(a, "--state-dir", str(t / "token" / "state")),
                     "state directory", id="state-dir-unwritable"),
        pytest.param(lambda a, t: replace(a, "--store-dir", str(t / "no" / "nix" / "store")),
                     "--store-dir", id="store-dir-missing"),
        pytest.param(lambda a, t: [*a, "--jobs", "many"], "--jobs", id="jobs-not-a-number"),
        pytest.param(lambda a, t: [*a, "--token", "x"], "unrecognized arguments: --token",
                     id="no-token-argument"),
    ],
)  # fmt: skip
def test_bad_configuration_exits_2_and_says_what_to_fix(
    base: tuple[list[str], dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: object,
    expected: str,
) -> None:
    (tmp_path / "empty").write_text("\n")
    argv, env = base
    assert callable(change)
    assert main(change(argv, tmp_path), env) == USAGE_EXIT
    err = capsys.readouterr().err
    assert expected in err
    assert "bad configuration, nothing was started" in err
    assert "a-token" not in err


def test_nix_missing_from_path_is_bad_configuration(
    base: tuple[list[str], dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv, env = base
    assert main(argv, env) == USAGE_EXIT
    assert "`nix-store` is not on PATH" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    out = capsys.readouterr().out
    for flag in ("--token-file", "--state-dir", "--shutdown-timeout", "--store-dir"):
        assert flag in out


def test_helpers_get_no_token_and_no_systemd_plumbing(tmp_path: Path) -> None:
    env = {
        **ENV,
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "1",
        "CREDENTIALS_DIRECTORY": "/run/credentials/x",
        "PATH": "/bin",
    }
    config = resolve(Options(state_dir=str(tmp_path), store_dir="/srv/b/nix/store"), env)
    child = helper_env(config, env, tmp_path)
    assert "ATTIC_TOKEN" not in child
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"} & set(child)
    assert child["NIX_REMOTE"] == "/srv/b"
    assert child["XDG_CACHE_HOME"] == str(tmp_path / "cache")
    assert child["PATH"] == "/bin"
