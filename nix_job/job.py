"""Orchestration of one run: inputs → Nix → cache → gate → command (+ watcher) → drain → report.

No decisions are made here (they live in pure modules) and no environment is read (the
entrypoint hands everything in as a ``Runtime``). Cleanup runs whatever happens.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from nix_job.default_branch import DefaultBranchLookup, fetch_default_branch, resolve_default_branch
from nix_job.errors import NixJobError
from nix_job.event import read_event
from nix_job.gating import PublishDecision, cache_push_env, decide_publish
from nix_job.gha import Workflow
from nix_job.inputs import Inputs, parse_inputs
from nix_job.nix_conf import AppliedConfig, NixConfigurator
from nix_job.nix_install import (
    Bootstrap,
    InstallRequest,
    NixBootstrapper,
    SubprocessRunner,
)
from nix_job.proc import Cancellation, command_env, run_command
from nix_job.report import Kind, NixFacts, Problem, RunReport
from nix_job.secret import Secret
from nix_job.summary import render_summary


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """Everything nix-job takes from its environment, read once by the entrypoint."""

    env: Mapping[str, str]
    workspace: Path
    runner_temp: Path
    event_payload: bytes | None
    token: Secret | None


class Run:
    """One run's mutable state: the report being built and the cleanups to perform."""

    def __init__(self, rt: Runtime, wf: Workflow, cancellation: Cancellation) -> None:
        self.rt = rt
        self.wf = wf
        self.cancellation = cancellation
        self.report = RunReport(
            command=rt.env.get("NIX_JOB_COMMAND", ""),
            working_directory=rt.env.get("NIX_JOB_WORKING_DIRECTORY", "."),
            attic_enabled=True,
        )
        self.outputs: dict[str, str] = {}

    def update(self, **changes: object) -> None:
        self.report = dataclasses.replace(self.report, **changes)  # type: ignore[arg-type]

    def problem(self, kind: Kind, title: str, message: str, hint_url: str | None = None) -> None:
        """Record a problem for the summary and annotate it (within the runner's budget)."""
        self.update(
            problems=(
                *self.report.problems,
                Problem(kind=kind, title=title, message=message, hint_url=hint_url),
            )
        )
        self.wf.annotate(kind, message if not hint_url else f"{message} ({hint_url})", title=title)

    def fail(self, error: NixJobError) -> None:
        self.problem("error", error.title, error.message, error.hint_url)


def run(rt: Runtime, wf: Workflow, cancellation: Cancellation) -> int:
    """Run the job; returns the action's exit code."""
    state = Run(rt, wf, cancellation)
    exit_code = 1
    with ExitStack() as cleanup:
        try:
            exit_code = _run(state, cleanup)
        except NixJobError as error:
            state.fail(error)
            exit_code = 1
        finally:
            cleanup.close()
            _finish(state)
    if cancellation.cancelled:
        return cancellation.exit_code
    return exit_code


def _run(state: Run, cleanup: ExitStack) -> int:
    rt = state.rt
    inputs = parse_inputs(rt.env, is_dir=lambda p: (rt.workspace / p).is_dir())
    state.update(
        command=inputs.command,
        working_directory=inputs.working_directory,
        attic_enabled=inputs.attic_enabled,
    )
    if rt.token:
        for form in rt.token.derived_forms():
            state.wf.mask(form)
    if inputs.github_token:
        state.wf.mask(inputs.github_token)

    cwd = (rt.workspace / inputs.working_directory).resolve()
    work = Path(tempfile.mkdtemp(prefix="nix-job-", dir=rt.runner_temp))
    cleanup.callback(_remove_tree, work)

    started = time.monotonic()
    boot = _bootstrap(state, inputs, work)
    conf_lines = [line for line in inputs.extra_conf.splitlines() if line.strip()]
    applied = _configure(state, boot, conf_lines, work, cleanup)
    state.update(bootstrap_seconds=time.monotonic() - started)

    decision = _decide(state, inputs, cache_attached=False)
    env = command_env(
        rt.env, add={**cache_push_env(decision), **applied.env, "PATH": boot.path_env}
    )
    return _run_command(state, inputs, cwd, env, work)


def _bootstrap(state: Run, inputs: Inputs, work: Path) -> Bootstrap:
    """Find Nix or install it; put it on PATH for this step and later ones."""
    rt = state.rt
    with state.wf.group("nix-job: Nix"), httpx.Client(follow_redirects=True) as http:
        boot = NixBootstrapper(
            runner=SubprocessRunner(),
            http=http,
            temp_dir=work,
            env=rt.env,
            log=state.wf.log,
        ).ensure(InstallRequest.from_inputs(inputs))
    for warning in boot.warnings:
        state.problem("warning", "nix-job: Nix", warning)
    if boot.github_path is not None:
        state.wf.add_path(str(boot.github_path))
    nix = boot.installation
    store = (
        "single-user"
        if not nix.daemon
        else ("daemon (trusted user)" if nix.trusted else "daemon (untrusted user)")
    )
    state.update(
        nix=NixFacts(
            version=nix.version,
            installed_now=boot.installed,
            store=store,
            config_delivery="not applied",
        )
    )
    return boot


def _configure(
    state: Run, boot: Bootstrap, lines: list[str], work: Path, cleanup: ExitStack
) -> AppliedConfig:
    """Apply nix.conf settings where the command's Nix reads them; restored at the end."""
    rt = state.rt
    run_id = f"{rt.env.get('GITHUB_RUN_ID', 'local')}-{rt.env.get('GITHUB_RUN_ATTEMPT', '1')}"
    configurator = NixConfigurator(
        runner=SubprocessRunner(),
        temp_dir=work,
        run_id=run_id,
        env={**rt.env, "PATH": boot.path_env},
        is_root=os.geteuid() == 0,
        log=state.wf.log,
    )
    with state.wf.group("nix-job: Nix configuration"):
        applied = configurator.apply(lines, installation=boot.installation)
    cleanup.callback(applied.restore)
    for warning in applied.warnings:
        state.problem("warning", "nix-job: Nix configuration", warning)
    delivery = {
        "env": "NIX_CONFIG",
        "system-file": f"{applied.conf_path} (restored after)",
        "env-ignored": "NIX_CONFIG (partly ignored by the daemon)",
    }[applied.mode]
    if state.report.nix is not None:
        state.update(nix=dataclasses.replace(state.report.nix, config_delivery=delivery))
    return applied


def _decide(state: Run, inputs: Inputs, *, cache_attached: bool) -> PublishDecision:
    """The publish gate, with the API fallback for the default branch when it can matter."""
    rt = state.rt
    event = read_event(rt.env, rt.event_payload)
    fetch = None
    if inputs.github_token and rt.env.get("GITHUB_REPOSITORY"):
        token = Secret(inputs.github_token)
        api_url = rt.env.get("GITHUB_API_URL") or "https://api.github.com"
        repository = rt.env["GITHUB_REPOSITORY"]

        def fetch() -> DefaultBranchLookup:
            return fetch_default_branch(token=token, api_url=api_url, repository=repository)

    event = resolve_default_branch(event, fetch)
    decision = decide_publish(
        event=event,
        push_cache=inputs.push_cache,
        token_present=rt.token is not None,
        cache_attached=cache_attached,
    )
    verdict = "publishes" if decision.allowed else "does not publish"
    state.wf.log(f"nix-job: this run {verdict}: {decision.reason}")
    if decision.notice:
        state.problem("notice", "nix-job: read-only run", decision.notice)
    state.update(publish_allowed=decision.allowed, publish_reason=decision.reason)
    return decision


def _run_command(state: Run, inputs: Inputs, cwd: Path, env: Mapping[str, str], work: Path) -> int:
    state.wf.log(f"nix-job: running the command in {cwd}")
    started = time.monotonic()
    result = run_command(
        inputs.command,
        cwd=cwd,
        env=env,
        script_dir=work / "command",
        cancellation=state.cancellation,
    )
    state.update(
        exit_code=result.exit_code,
        command_seconds=time.monotonic() - started,
        cancelled=result.cancelled,
    )
    state.wf.log(
        f"nix-job: the command exited with {result.exit_code} after {result.seconds:.1f} s"
    )
    return result.exit_code


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _finish(state: Run) -> None:
    report = state.report
    outputs = {
        "exit-code": "" if report.exit_code is None else str(report.exit_code),
        "cache-push": "true" if report.publish_allowed else "false",
        "cache-push-reason": report.publish_reason,
        "command-seconds": ""
        if report.command_seconds is None
        else f"{report.command_seconds:.3f}",
        "bootstrap-seconds": ""
        if report.bootstrap_seconds is None
        else f"{report.bootstrap_seconds:.3f}",
        "paths-pushed": str(report.push.pushed_during_build + report.push.pushed_final)
        if report.push
        else "0",
        "paths-failed": str(report.push.failed + report.push.left_over) if report.push else "0",
    }
    state.wf.set_outputs(outputs)
    state.wf.write_summary(render_summary(report))
