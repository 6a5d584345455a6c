"""The action with a cache: real Nix, the Attic double over HTTP, action.yml via the harness.

Push to the default branch publishes while the build runs; a pull request with a push token
and push-cache true sends no write request at all and substitutes what was published; the
raw-Nix opt-out never talks to the server; the token is found nowhere afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.actionrun import dump, nix_process_env, run_nix_job
from tests.attic_double import AtticDouble
from tests.harness import ActionResult
from tests.nixenv import NixEnv, require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

CACHE = "team"


@pytest.fixture(scope="module")
def tool_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toolcache")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as server:
        server.create_cache(CACHE)  # private: reads need a token
        yield server


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


def run(
    *,
    nix: NixEnv,
    workspace: Path,
    tool_cache: Path,
    double: AtticDouble,
    command: str,
    token: str | None,
    event: str = "push",
    **inputs: str,
) -> ActionResult:
    workspace.mkdir(exist_ok=True)
    return run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={
            "command": command,
            "attic-server": double.url,
            "attic-cache": CACHE,
            **{k.replace("_", "-"): v for k, v in inputs.items()},
        },
        event=event,
        env={"ATTIC_TOKEN": token} if token else {},
        process_env=nix_process_env(nix),
        secrets=(token,) if token else (),
    )


def delete_local(nix: NixEnv, workspace: Path, paths: list[str]) -> None:
    """Forget the outputs locally, as a fresh runner would not have them."""
    for link in workspace.glob("result*"):
        link.unlink()
    nix.run(["nix-store", "--delete", *paths])
    assert not any(Path(p).exists() for p in paths)


def test_push_publishes_during_the_build_and_a_pull_request_reads_only(
    nix: NixEnv, tmp_path: Path, tool_cache: Path, double: AtticDouble
) -> None:
    drv = write_derivations(tmp_path / "src", count=3, chain=True, sleep_s=1.0)
    outputs = drv.out_paths(nix)
    command = f"nix-build {drv.file} -A d2\ndate +%s.%N > build-ended"
    push_token = double.make_token({CACHE: "rw"})

    pushed = run(
        nix=nix,
        workspace=tmp_path / "ws1",
        tool_cache=tool_cache,
        double=double,
        command=command,
        token=push_token,
        push_cache="true",
    )
    assert pushed.exit_code == 0, dump(pushed)
    assert pushed.outputs["cache-push"] == "true", dump(pushed)
    stored = {o.store_path for o in double.objects(CACHE)}
    assert set(outputs.values()) <= stored, dump(pushed)
    assert int(pushed.outputs["paths-pushed"]) >= 3
    build_ended = float((tmp_path / "ws1" / "build-ended").read_text())
    first_upload = min(r.ended_at for r in double.upload_requests() if r.status == 200)
    assert first_upload < build_ended, "nothing was uploaded while the build was running"
    assert "Pushed during build" in pushed.step("run").summary
    assert not pushed.leaks(push_token)

    delete_local(nix, tmp_path / "ws1", [outputs["d2"], outputs["d1"], outputs["d0"]])
    double.clear_requests()

    # A same-repository pull request gets the secret; it must stay read-only anyway.
    pr = run(
        nix=nix,
        workspace=tmp_path / "ws2",
        tool_cache=tool_cache,
        double=double,
        command=command,
        token=push_token,
        event="pull_request",
        push_cache="true",
    )
    assert pr.exit_code == 0, dump(pr)
    assert pr.outputs["cache-push"] == "false"
    assert "pull request" in pr.outputs["cache-push-reason"]
    assert double.write_requests() == [], "a pull request sent a write request"
    assert f"copying path '{outputs['d2']}'" in pr.raw_output, dump(pr)
    notices = [a for a in pr.annotations_of("notice") if a.source == "command"]
    assert any("read-only" in a.message for a in notices), dump(pr)
    assert not pr.leaks(push_token)
    leftovers = [p for p in pr.runner_temp.rglob("*") if p.is_file()]
    assert not any("netrc" in p.name for p in leftovers), leftovers


def test_anonymous_reads_of_a_public_cache(
    nix: NixEnv, tmp_path: Path, tool_cache: Path, double: AtticDouble
) -> None:
    double.create_cache("public", public=True)
    drv = write_derivations(tmp_path / "src", count=1)
    path = drv.build(nix)[0]
    nar = nix.dump(path)
    double.put_path("public", store_path=path, nar=nar)
    delete_local(nix, tmp_path, [path])

    (tmp_path / "ws").mkdir()
    result = run_nix_job(
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        inputs={
            "command": f"nix-store --realise {path}",
            "attic-server": double.url,
            "attic-cache": "public",
        },
        event="fork_pull_request",
        process_env=nix_process_env(nix),
    )
    assert result.exit_code == 0, dump(result)
    assert f"copying path '{path}'" in result.raw_output
    assert "anonymous" in result.step("run").summary
    assert all(r.auth_scheme is None for r in double.requests)


def test_raw_nix_opt_out_never_talks_to_the_server(
    nix: NixEnv, tmp_path: Path, tool_cache: Path, double: AtticDouble
) -> None:
    result = run(
        nix=nix,
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        double=double,
        command="nix --version",
        token=double.make_token({CACHE: "rw"}),
        attic_enabled="false",
        push_cache="true",
    )
    assert result.exit_code == 0, dump(result)
    assert double.requests == []
    assert result.outputs["cache-push"] == "false"
    assert "no Attic cache is attached" in result.outputs["cache-push-reason"]


def test_a_failed_build_keeps_what_it_finished(
    nix: NixEnv, tmp_path: Path, tool_cache: Path, double: AtticDouble
) -> None:
    drv = write_derivations(tmp_path / "src", count=3, chain=True, sleep_s=0.5, fail=[2])
    outputs = drv.out_paths(nix)
    result = run(
        nix=nix,
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        double=double,
        command=f"nix-build {drv.file} -A d2",
        token=double.make_token({CACHE: "rw"}),
        push_cache="true",
    )
    assert result.exit_code != 0, dump(result)
    stored = {o.store_path for o in double.objects(CACHE)}
    assert {outputs["d0"], outputs["d1"]} <= stored, dump(result)
    assert outputs["d2"] not in stored


def test_unreachable_server_warns_and_the_command_still_runs(
    nix: NixEnv, tmp_path: Path, tool_cache: Path
) -> None:
    (tmp_path / "ws").mkdir()
    with AtticDouble() as gone:
        url = gone.url
    result = run_nix_job(
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        inputs={"command": "echo ran > ran", "attic-server": url, "attic-cache": CACHE},
        env={"ATTIC_TOKEN": "tok"},
        process_env=nix_process_env(nix),
    )
    assert result.exit_code == 0, dump(result)
    assert (tmp_path / "ws" / "ran").exists()
    warnings = [a for a in result.annotations_of("warning") if a.source == "command"]
    assert warnings, dump(result)


def test_a_wrong_pinned_key_stops_the_run_clearly(
    nix: NixEnv, tmp_path: Path, tool_cache: Path, double: AtticDouble
) -> None:
    subprocess.run(
        [
            "nix-store",
            "--generate-binary-cache-key",
            "team",
            str(tmp_path / "sk"),
            str(tmp_path / "pk"),
        ],
        check=True,
        capture_output=True,
        env=nix.env(),
    )
    wrong = (tmp_path / "pk").read_text().strip()
    result = run(
        nix=nix,
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        double=double,
        command="touch ran",
        token=double.make_token({CACHE: "r"}),
        attic_public_key=wrong,
    )
    assert result.exit_code == 1, dump(result)
    assert not (tmp_path / "ws" / "ran").exists()
    errors = [a for a in result.annotations_of("error") if a.source == "command"]
    assert len(errors) == 1, dump(result)
    assert "key" in errors[0].message.lower()


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("rw", True), id="push-token-on-a-pull-request-warns"),
        pytest.param(("r", False), id="pull-token-is-quiet"),
    ],
)
def test_a_pull_request_holding_a_push_token_is_warned(
    nix: NixEnv, tmp_path: Path, tool_cache: Path, double: AtticDouble, case: tuple[str, bool]
) -> None:
    perms, warned = case
    token = double.make_token({CACHE: perms})
    result = run(
        nix=nix,
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        double=double,
        command="true",
        token=token,
        event="pull_request",
    )
    assert result.exit_code == 0, dump(result)
    titles = [a.title for a in result.annotations_of("warning") if a.source == "command"]
    assert ("nix-job: push token on a read-only run" in titles) is warned, dump(result)
    assert double.write_requests() == []
    assert not result.leaks(token)
