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

from nix_job.cache.attach import DEFAULT_NETRC, Attachment, attach_reads, usable_token
from nix_job.cache.attic import AtticClient
from nix_job.cache.target import plaintext_token_problem, resolve_target
from nix_job.command import Cancellation, command_env, run_command
from nix_job.core.decision import PublishDecision, cache_push_env
from nix_job.core.errors import DOCS_URL, AtticError, NixJobError
from nix_job.core.inputs import Inputs, parse_inputs
from nix_job.core.report import Kind, NixFacts, Problem, RunReport
from nix_job.core.secret import Secret
from nix_job.core.summary import action_outputs, render_summary
from nix_job.core.token_scope import can_push
from nix_job.frontends.github.api import (
    DefaultBranchLookup,
    fetch_default_branch,
    resolve_default_branch,
)
from nix_job.frontends.github.commands import Workflow
from nix_job.frontends.github.event import TRUSTED_EVENTS, read_event
from nix_job.frontends.github.gate import decide_publish
from nix_job.nix.configurator import AppliedConfig, NixConfigurator
from nix_job.nix.facts import InstallRequest
from nix_job.nix.install import Bootstrap, NixBootstrapper
from nix_job.nix.store import NixStore
from nix_job.process import SubprocessRunner
from nix_job.push.publisher import Publisher, final_roots, push_facts


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
    # SECURITY: mask every form of the secrets before anything can print them.
    if rt.token:
        for form in rt.token.derived_forms():
            state.wf.mask(form)
    if rt.env.get("NIX_JOB_GITHUB_TOKEN", "").strip():
        state.wf.mask(rt.env["NIX_JOB_GITHUB_TOKEN"].strip())
    inputs = parse_inputs(rt.env, is_dir=lambda p: (rt.workspace / p).is_dir())
    state.update(
        command=inputs.command,
        working_directory=inputs.working_directory,
        attic_enabled=inputs.attic_enabled,
    )

    cwd = (rt.workspace / inputs.working_directory).resolve()
    work = Path(tempfile.mkdtemp(prefix="nix-job-", dir=rt.runner_temp))
    cleanup.callback(_remove_tree, work)

    started = time.monotonic()
    boot = _bootstrap(state, inputs, work)
    if state.cancellation.cancelled:
        return state.cancellation.exit_code
    attachment, client = _attach(state, inputs, boot, cleanup)
    conf_lines = [line for line in inputs.extra_conf.splitlines() if line.strip()]
    if attachment is not None and attachment.attached:
        conf_lines += attachment.conf_lines
        # Nix remembers misses for an hour (narinfo-cache-negative-ttl): on a persistent runner
        # a path another job just published would be rebuilt. Always ask the cache again.
        conf_lines.append("narinfo-cache-negative-ttl = 0")
    applied = _configure(state, boot, conf_lines, work, cleanup)
    state.update(bootstrap_seconds=time.monotonic() - started)
    if state.cancellation.cancelled:
        return state.cancellation.exit_code

    attached = attachment is not None and attachment.attached
    decision, would_publish = _decide(state, inputs, cache_attached=attached)
    if attachment is not None and attachment.netrc is not None and attachment.facts is not None:
        _warn_if_token_can_push(state, attachment.facts.cache)
    nix_env = command_env(rt.env, add={**applied.env, "PATH": boot.path_env})
    env = {**nix_env, **cache_push_env(decision)}
    publisher = None
    if decision.allowed and client is not None:
        publisher = _start_publishing(state, inputs, client, NixStore(nix_env), cleanup)

    exit_code = _run_command(state, inputs, cwd, env, work)
    if publisher is not None:
        _finish_publishing(state, inputs, publisher, cwd)
    return _final_exit_code(state, inputs, exit_code, publishing_expected=would_publish)


def _attach(
    state: Run, inputs: Inputs, boot: Bootstrap, cleanup: ExitStack
) -> tuple[Attachment | None, AtticClient | None]:
    """Resolve the cache and attach it for reads (every run, pull requests included)."""
    rt = state.rt
    if not inputs.attic_enabled:
        state.wf.log("nix-job: attic-enabled is false: no cache is attached or touched")
        return None, None
    resolution = resolve_target(
        server_input=inputs.attic_server, cache_input=inputs.attic_cache, env_hints=rt.env
    )
    for problem in resolution.problems:
        state.problem(problem.kind, problem.title, problem.message, problem.hint_url)
    target = resolution.target
    if target is None:
        return None, None
    plaintext = plaintext_token_problem(target, token_present=usable_token(rt.token) is not None)
    if plaintext is not None:
        state.problem(plaintext.kind, plaintext.title, plaintext.message, plaintext.hint_url)
    client = AtticClient(
        endpoint=target.server,
        cache=target.cache,
        token=usable_token(rt.token),
        max_connections=inputs.push_jobs + 1,
    )
    cleanup.callback(client.close)
    netrc = boot.installation.config.get("netrc-file") or str(DEFAULT_NETRC)
    with state.wf.group("nix-job: Attic cache"):
        attachment = attach_reads(
            target=target,
            pinned_key=inputs.attic_public_key,
            source=client,
            token=rt.token,
            base_netrc=Path(netrc),
            temp_root=rt.runner_temp,
        )
        cleanup.callback(_remove_netrc, state, attachment)
        state.wf.log(attachment.describe())
    for secret in attachment.mask:
        state.wf.mask(secret.reveal())
    for problem in attachment.problems:
        state.problem(problem.kind, problem.title, problem.message, problem.hint_url)
    state.update(cache=attachment.facts)
    return attachment, client


def _remove_netrc(state: Run, attachment: Attachment) -> None:
    problem = attachment.cleanup()
    if problem:
        state.problem("warning", "nix-job: temporary netrc", problem)


def _start_publishing(
    state: Run, inputs: Inputs, client: AtticClient, store: NixStore, cleanup: ExitStack
) -> Publisher | None:
    """Watcher and push session, started before the command (the gate said yes)."""
    try:
        config = client.cache_config()
    except AtticError as error:
        state.problem(
            "warning",
            "nix-job: publishing skipped",
            f"The cache configuration could not be read, so nothing is published: {error.message}",
            error.hint_url,
        )
        return None
    publisher = Publisher(
        client=client,
        store=store,
        upstream_key_names=config.upstream_cache_key_names,
        exclude=inputs.push_exclude,
        jobs=inputs.push_jobs,
        log=state.wf.log,
    )
    cleanup.callback(publisher.close)
    publisher.start()
    return publisher


def _finish_publishing(state: Run, inputs: Inputs, publisher: Publisher, cwd: Path) -> None:
    """Final push of the command's outputs and a bounded drain; results into the report."""
    with state.wf.group("nix-job: uploads"):
        outcome = publisher.finish(
            roots=final_roots(cwd, inputs.push_paths),
            timeout_s=inputs.drain_timeout,
            cancelled=lambda: state.cancellation.cancelled,
        )
    report = outcome.report
    facts = push_facts(report)
    state.update(push=facts)
    state.wf.log(
        f"nix-job: pushed {facts.pushed_during_build} path(s) during the build and "
        f"{facts.pushed_final} at the end; {facts.already_cached} already cached, "
        f"{facts.upstream} upstream, {facts.excluded} excluded, {facts.failed} failed, "
        f"{facts.left_over} left over; drain {facts.drain_seconds:.1f} s"
    )
    if outcome.watcher_note:
        state.problem("warning", "nix-job: store watcher", outcome.watcher_note)
    if report.auth_error:
        state.problem(
            "warning",
            "nix-job: uploads refused",
            report.auth_error,
            DOCS_URL + "401-or-403-from-attic",
        )
    elif facts.failed or facts.left_over:
        total = facts.pushed_during_build + facts.pushed_final + facts.failed + facts.left_over
        state.problem(
            "warning",
            "nix-job: uploads incomplete",
            f"{facts.failed} of {total} path(s) failed to upload and {facts.left_over} were "
            f"left over at the drain deadline ({inputs.drain_timeout} s); see the job summary. "
            "The build result is not affected.",
        )


def _final_exit_code(
    state: Run, inputs: Inputs, exit_code: int, *, publishing_expected: bool
) -> int:
    """The command's exit code, unless require-cache-push asks to fail on upload trouble."""
    if not (inputs.require_cache_push and publishing_expected) or exit_code != 0:
        return exit_code
    push = state.report.push
    if push is not None and not (push.failed or push.left_over):
        return exit_code
    what = (
        "nothing could be published (the cache was not attached or its configuration could "
        "not be read; see the warnings above)"
        if push is None
        else f"{push.failed} path(s) failed and {push.left_over} were left over"
    )
    state.problem(
        "error",
        "nix-job: required cache push failed",
        f"require-cache-push is true and {what}; the command itself succeeded.",
    )
    return 1


def _bootstrap(state: Run, inputs: Inputs, work: Path) -> Bootstrap:
    """Find Nix or install it; put it on PATH for this step and later ones."""
    rt = state.rt
    with state.wf.group("nix-job: Nix"), httpx.Client(follow_redirects=True) as http:
        boot = NixBootstrapper(
            runner=SubprocessRunner(),
            http=http,
            temp_dir=work,
            env=command_env(rt.env, add={}),  # SECURITY: no token for nix --version & co.
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
        env=command_env(rt.env, add={"PATH": boot.path_env}),
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


def _decide(state: Run, inputs: Inputs, *, cache_attached: bool) -> tuple[PublishDecision, bool]:
    """The publish gate, with the API fallback for the default branch when it can matter.

    Also returns whether the run *would* publish had the cache attached: with
    require-cache-push, a trusted run whose cache could not be attached is a failure.
    """
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
    would_publish = decision.allowed or (
        inputs.attic_enabled
        and decide_publish(
            event=event,
            push_cache=inputs.push_cache,
            token_present=rt.token is not None,
            cache_attached=True,
        ).allowed
    )
    return decision, would_publish


def _warn_if_token_can_push(state: Run, cache: str) -> None:
    """On runs of untrusted code, a token that can push is readable by the command (netrc)."""
    token = usable_token(state.rt.token)
    event = state.rt.env.get("GITHUB_EVENT_NAME", "")
    if token is None or event in TRUSTED_EVENTS or can_push(token.reveal(), cache) is not True:
        return
    state.problem(
        "warning",
        "nix-job: push token on a read-only run",
        f"This {event or 'unknown'} run never publishes, but ATTIC_TOKEN can push to cache "
        f"`{cache}`, and the command (the pull request's code) runs as the same user as Nix, so "
        "it could read the token from the temporary netrc while it runs. Give such runs a "
        "pull-only token (see Security in the README).",
        DOCS_URL + "security",
    )


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
    if state.cancellation.cancelled and not state.report.cancelled:
        state.update(cancelled=True)  # cancelled after the command, e.g. during the drain
    state.wf.set_outputs(action_outputs(state.report))
    state.wf.write_summary(render_summary(state.report))
