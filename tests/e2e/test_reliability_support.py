"""Shared bed of the reliability suite: run the real action against the Attic double and real Nix,
watch every process it starts, and find the token anywhere it could have escaped.

The tests in this module prove that the detectors themselves detect (a leak planted on purpose
is found), so a green reliability suite cannot come from a blind check.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.actionrun import EVENTS, ROOT, nix_process_env
from tests.attic_double import AtticDouble
from tests.harness import ActionResult, Annotation, Cancel, run_action
from tests.nixenv import NixEnv

CACHE = "team"
NIX_CONF = Path("/etc/nix/nix.conf")
SAMPLE_EVERY_S = 0.02


# --- secret forms --------------------------------------------------------------------------------


def secret_forms(token: str) -> dict[str, bytes]:
    """Every form of ``token`` that would betray it, by name.

    Besides the explicit forms (the token, ``Bearer``, base64 of ``:token`` and of
    ``nix-job:token``, the ``Basic`` header), the three "cores" catch the token inside *any*
    base64 text, whatever login or prefix precedes it: base64 of a string containing the token
    at byte offset o contains the core for ``o % 3``.
    """
    raw = token.encode()
    forms = {
        "token": raw,
        "base64(:token)": base64.b64encode(b":" + raw),
        "base64(nix-job:token)": base64.b64encode(b"nix-job:" + raw),
        "Basic header": b"Basic " + base64.b64encode(b"nix-job:" + raw),
    }
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        core = encoded[(4 if offset else 0) : -4]
        if len(core) >= 16:
            forms[f"base64 core {offset}"] = core
    return forms


def find_in_bytes(data: bytes, forms: Mapping[str, bytes]) -> list[str]:
    return [name for name, form in forms.items() if form in data]


def leaks_in_tree(root: Path, forms: Mapping[str, bytes]) -> list[str]:
    """Files under ``root`` holding any form (symlinks are not followed)."""
    found: list[str] = []
    if not root.exists():
        return found
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {name}" for name in find_in_bytes(data, forms)]
    return found


# --- processes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSeen:
    pid: int
    ppid: int
    pgid: int
    cmdline: bytes
    environ_has_token: bool


def _read_process(pid: str, token: bytes | None) -> ProcessSeen | None:
    try:
        stat = Path("/proc", pid, "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cmdline = Path("/proc", pid, "cmdline").read_bytes()
        has = False
        if token:
            with contextlib.suppress(OSError):
                has = token in Path("/proc", pid, "environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return ProcessSeen(
        pid=int(pid),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        cmdline=cmdline,
        environ_has_token=has,
    )


def is_nix_job(cmdline: bytes) -> bool:
    """The command line of nix-job as the action (``runtime/start.py``) or a module starts it."""
    return b"runtime/start.py" in cmdline or b"-m\0nix_job" in cmdline


class ProcessSampler:
    """Samples every process that appears after ``start()`` every 20 ms: argv, parent, process
    group and whether its environment holds the token. Use as a context manager."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None
        self._baseline: set[str] = set()
        self._seen: dict[tuple[int, bytes], ProcessSeen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="argv-sampler", daemon=True)
        self.samples = 0

    def __enter__(self) -> ProcessSampler:
        self._baseline = {p for p in os.listdir("/proc") if p.isdigit()}
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid in self._baseline:
                    continue
                seen = _read_process(pid, self._token)
                if seen is not None and seen.cmdline:
                    self._seen.setdefault((seen.pid, seen.cmdline), seen)
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)

    @property
    def processes(self) -> list[ProcessSeen]:
        return list(self._seen.values())

    def argv_leaks(self, forms: Mapping[str, bytes]) -> list[str]:
        return [
            f"{p.pid} {p.cmdline!r}: {name}"
            for p in self.processes
            for name in find_in_bytes(p.cmdline, forms)
        ]

    def nix_job_pids(self) -> set[int]:
        """nix-job processes (``runtime/start.py`` or ``-m nix_job``) started by this test
        process (not by other test runs
        on the same machine, which the sampler sees too)."""
        by_pid = {p.pid: p.ppid for p in self.processes}
        me = os.getpid()

        def ours(pid: int) -> bool:
            for _ in range(50):
                if pid == me:
                    return True
                if pid not in by_pid:
                    return False
                pid = by_pid[pid]
            return False

        return {p.pid for p in self.processes if is_nix_job(p.cmdline) and ours(p.ppid)}

    def descendants_of_nix_job(self) -> list[ProcessSeen]:
        """Processes started (directly or not) by nix-job."""
        roots = self.nix_job_pids()
        by_pid: dict[int, set[int]] = {}
        for p in self.processes:
            by_pid.setdefault(p.pid, set()).add(p.ppid)
        found: list[ProcessSeen] = []
        for p in self.processes:
            if p.pid in roots:
                continue
            chain, parent, hops = set(), p.ppid, 0
            while parent not in roots and parent in by_pid and parent not in chain and hops < 50:
                chain.add(parent)
                parent = min(by_pid[parent])
                hops += 1
            if parent in roots:
                found.append(p)
        return found


def live_members(pgid: int) -> list[str]:
    """Live processes of a process group (Linux /proc)."""
    members: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        seen = _read_process(entry, None)
        if seen is None or seen.pgid != pgid:
            continue
        with contextlib.suppress(OSError):
            state = Path("/proc", entry, "stat").read_text()
            if state[state.rindex(")") + 2 :].split()[0] == "Z":
                continue
        members.append(f"{entry} {seen.cmdline!r}")
    return members


def kill_group_quietly(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --- the bed -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One action run and what the bed watched while it ran."""

    result: ActionResult
    workspace: Path
    runner_temp: Path
    run_id: str
    token: str | None
    processes: ProcessSampler
    seconds: float

    @property
    def run_step(self) -> object:
        return self.result.step("run")

    @property
    def summary(self) -> str:
        return self.result.step("run").summary

    def annotations(self, kind: str) -> list[Annotation]:
        return [a for a in self.result.annotations if a.kind == kind and a.source == "command"]

    def warnings_about(self, *words: str) -> list[Annotation]:
        return [
            a
            for a in self.annotations("warning")
            if any(w in f"{a.title or ''} {a.message}".lower() for w in words)
        ]

    def dump(self) -> str:
        return (
            f"exit={self.result.exit_code} outputs={dict(self.result.outputs)} "
            f"seconds={self.seconds:.1f}\n{self.result.output[-6000:]}"
        )


@dataclass(slots=True, kw_only=True)
class Bed:
    """One test's machine: an isolated Nix, the Attic double, a shared action tool cache."""

    root: Path
    nix: NixEnv
    double: AtticDouble
    tool_cache: Path
    url: str  # the double's URL, known even after it was stopped
    public_key: str
    runs: list[Run] = field(default_factory=list)

    def token(self, perms: str = "rw") -> str:
        return self.double.make_token({CACHE: perms})

    def run(
        self,
        command: str,
        *,
        token: str | None,
        event: str = "push",
        inputs: Mapping[str, str] | None = None,
        workspace: Path | None = None,
        runner_temp: Path | None = None,
        cancel: Cancel | None = None,
        cache_inputs: bool = True,
        during: Callable[[Path], None] | None = None,
        token_value: str | None = None,
        debug: bool = False,
        timeout: float = 200.0,
    ) -> Run:
        """Run the action's ``command`` with the cache inputs pointing at the double.

        ``during(workspace)`` runs in a thread while the action runs (e.g. to switch faults
        when the command writes a marker file); it must return by itself. ``token_value`` is
        what ATTIC_TOKEN holds when it differs from the token (e.g. a pasted trailing newline);
        ``debug`` turns on runner debug logging (RUNNER_DEBUG=1).
        """
        n = len(self.runs)
        ws = workspace or self.root / f"ws{n}"
        ws.mkdir(parents=True, exist_ok=True)
        temp = runner_temp or self.root / f"runner-temp{n}"
        temp.mkdir(parents=True, exist_ok=True)
        run_id = f"{int(time.time())}{uuid.uuid4().int % 10**6}"
        all_inputs = {"command": command}
        if cache_inputs:
            all_inputs.update({"attic-server": self.url, "attic-cache": CACHE})
        all_inputs.update(inputs or {})
        event_name, ref, payload = EVENTS[event]
        helper = None
        if during is not None:
            helper = threading.Thread(target=during, args=(ws,), name="during-run", daemon=True)
        started = time.monotonic()
        with ProcessSampler(token) as sampler:
            if helper is not None:
                helper.start()
            result = run_action(
                ROOT,
                inputs=all_inputs,
                env={"ATTIC_TOKEN": token_value or token} if token else {},
                event_name=event_name,
                event_payload=payload,
                ref=ref,
                workspace=ws,
                runner_temp=temp,
                tool_cache=self.tool_cache,
                github={"repository": "acme/app", "run_id": run_id},
                runner={"debug": "1"} if debug else None,
                host_env=nix_process_env(self.nix),
                secrets=(token,) if token else (),
                cancel=cancel,
                timeout=timeout,
            )
        seconds = time.monotonic() - started
        if helper is not None:
            helper.join(timeout=30)
        run = Run(
            result=result,
            workspace=ws,
            runner_temp=temp,
            run_id=run_id,
            token=token,
            processes=sampler,
            seconds=seconds,
        )
        self.runs.append(run)
        return run


def when_file(
    name: str, action: Callable[[Path], None], *, timeout_s: float = 120.0
) -> Callable[[Path], None]:
    """A ``during`` helper: wait until the command creates ``name`` in the workspace, then call
    ``action(workspace)``."""

    def watch(workspace: Path) -> None:
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if (workspace / name).exists():
                action(workspace)
                return
            time.sleep(0.02)

    return watch


@contextlib.contextmanager
def bed_for(root: Path, tool_cache: Path) -> Iterator[Bed]:
    with AtticDouble() as double:
        cache = double.create_cache(CACHE)
        yield Bed(
            root=root,
            nix=NixEnv.create(root / "nix"),
            double=double,
            tool_cache=tool_cache,
            url=double.url,
            public_key=cache.public_key,
        )


@pytest.fixture(scope="session")
def shared_tool_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One action venv for every reliability module (a runner's RUNNER_TOOL_CACHE): the
    directory is fixed per session, so each module's fixture finds the venv already built."""
    path = tmp_path_factory.getbasetemp() / "reliability-toolcache"
    path.mkdir(exist_ok=True)
    return path


def only(tag: str) -> str:
    """A ``push-exclude`` regex that excludes every store path whose name lacks ``tag``: other
    tests build in the same /nix/store at the same time, and their paths must not change this
    test's counts."""
    return f"^(?!.*{tag})"


# --- what every run must satisfy -----------------------------------------------------------------


def leaks(run: Run, nix: NixEnv | None = None) -> list[str]:
    """Everywhere the run's token (in any form) escaped; empty when it never did."""
    if not run.token:
        return []
    forms = secret_forms(run.token)
    found: list[str] = []
    result = run.result
    for form in forms.values():
        found += result.leaks(form.decode())
    # What ActionResult.leaks misses: files left behind, argv, the environment of every process
    # nix-job started (the user's command and Nix included), the harness's raw step outputs.
    found += leaks_in_tree(run.runner_temp, forms)
    found += leaks_in_tree(run.workspace, forms)
    if nix is not None:
        found += leaks_in_tree(nix.root, forms)
    found += run.processes.argv_leaks(forms)
    for step in result.steps:
        for name in find_in_bytes(step.raw_output.encode(), forms):
            if not all(
                line.lstrip().startswith("::add-mask")
                for line in step.raw_output.splitlines()
                if forms[name].decode() in line
            ):
                found.append(f"raw output of step {step.label}: {name}")
    return found


def environ_leaks(run: Run) -> list[str]:
    """Processes started by nix-job (Nix calls, the user's command) whose environment holds the
    token. Another process of the same user (the command itself) could read it there."""
    return [
        f"environment of {p.pid} {p.cmdline!r}"
        for p in run.processes.descendants_of_nix_job()
        if p.environ_has_token
    ]


def netrc_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if "netrc" in p.name]


def nix_conf_blocks(run_id: str) -> list[str]:
    """Lines of /etc/nix/nix.conf that belong to a nix-job block of this run."""
    if not NIX_CONF.exists():
        return []
    return [
        line
        for line in NIX_CONF.read_text(errors="replace").splitlines()
        if line.startswith("# BEGIN nix-job") and run_id in line
    ]


def assert_no_trace(run: Run, bed: Bed) -> None:
    """The run left nothing behind: no netrc, no nix.conf block, no settings for later steps."""
    assert netrc_files(run.runner_temp) == [], run.dump()
    assert nix_conf_blocks(run.run_id) == []
    conf = NIX_CONF.read_text(errors="replace") if NIX_CONF.exists() else ""
    assert bed.url.rstrip("/") not in conf
    assert bed.public_key not in conf
    step = run.result.step("run")
    assert "NIX_CONFIG" not in step.env_added
    assert bed.url.rstrip("/") not in step.files.env


def assert_cache_is_sound(bed: Bed) -> None:
    """Every object the double stores is exactly its store path's NAR (when it still exists)."""
    for obj in bed.double.objects(CACHE):
        assert obj.nar_hash == "sha256:" + hashlib.sha256(obj.nar).hexdigest(), obj.store_path
        assert obj.nar_size == len(obj.nar), obj.store_path
        if Path(obj.store_path).exists():
            assert obj.nar == bed.nix.dump(obj.store_path), f"{obj.store_path} differs locally"


SUMMARY_ROW = re.compile(
    r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|"
)


def upload_counts(summary: str) -> dict[str, int]:
    """The numbers of the summary's Uploads table."""
    names = (
        "during",
        "final",
        "cached",
        "upstream",
        "excluded",
        "vanished",
        "failed",
        "left_over",
    )
    for line in summary.splitlines():
        if m := SUMMARY_ROW.match(line):
            return dict(zip(names, (int(g) for g in m.groups()), strict=True))
    raise AssertionError(f"no Uploads table in the summary:\n{summary}")


DRAIN_CELL = re.compile(r"\| ([\d.]+) s \|\s*$")


def drain_seconds(summary: str) -> float:
    """The Drain column of the summary's Uploads table."""
    for line in summary.splitlines():
        if SUMMARY_ROW.match(line) and (m := DRAIN_CELL.search(line)):
            return float(m.group(1))
    raise AssertionError(f"no drain time in the summary:\n{summary}")


# --- the detectors detect ------------------------------------------------------------------------


TOKEN = "eyJhbGciOiJIUzI1NiJ9.reliability-probe-token.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(TOKEN.encode(), id="plain"),
        pytest.param(b"Authorization: Bearer " + TOKEN.encode(), id="bearer"),
        pytest.param(base64.b64encode(b":" + TOKEN.encode()), id="basic-no-login"),
        pytest.param(base64.b64encode(b"nix-job:" + TOKEN.encode()), id="basic-our-login"),
        pytest.param(base64.b64encode(b"someone-else:" + TOKEN.encode()), id="basic-any-login"),
        pytest.param(base64.b64encode(b"x" + TOKEN.encode() + b"y"), id="base64-inside"),
    ],
)
def test_every_form_of_the_token_is_recognised(text: bytes) -> None:
    assert find_in_bytes(b"prefix " + text + b" suffix", secret_forms(TOKEN))


def test_harmless_text_is_not_a_leak() -> None:
    text = base64.b64encode(b"nix-job:another-token-entirely-0123456789") + b" token=***"
    assert find_in_bytes(text, secret_forms(TOKEN)) == []


def test_a_file_left_with_the_token_is_found(tmp_path: Path) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "netrc").write_text(f"machine h login nix-job password {TOKEN}\n")
    (tmp_path / "clean").write_text("nothing here")
    assert leaks_in_tree(tmp_path, secret_forms(TOKEN)) == [f"{tmp_path}/deep/er/netrc: token"]


def test_the_sampler_sees_argv_and_environment_of_short_lived_processes() -> None:
    with ProcessSampler(TOKEN) as sampler:
        # A process that lives ~0.3 s with the token in argv, and one with it in its environment.
        subprocess.run(["sh", "-c", f"sleep 0.3; : {TOKEN}"], check=True)
        subprocess.run(["sleep", "0.3"], env={**os.environ, "LEAKED": TOKEN}, check=True)
    assert any("token" in leak for leak in sampler.argv_leaks(secret_forms(TOKEN)))
    assert any(p.environ_has_token and b"sleep" in p.cmdline for p in sampler.processes)
    assert sampler.samples > 5
