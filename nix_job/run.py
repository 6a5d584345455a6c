"""The lifecycle of one run: inputs → Nix → cache → gate → command (+ watcher) → drain → report.

Takes a front end (``nix_job.frontends.base.Frontend``) and never names a CI variable: the
front end owns the trigger, the gate, the log and the outputs. Decisions live in pure modules
(``core.outcome``, ``core.inputs``, the front end's gate); this module only sequences adapters
and guarantees cleanup, whatever happens.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from nix_job.adapters import Adapters, Applied, Attic, PublisherRequest, PublishingRun
from nix_job.cache.attach import DEFAULT_NETRC, Attachment, attach_reads, usable_token
from nix_job.cache.credentials import credentials_for_run, from_attic_token
from nix_job.cache.target import plaintext_token_problem, resolve_target
from nix_job.command import Cancellation
from nix_job.core.decision import GateInputs, PublishDecision, cache_push_env
from nix_job.core.errors import AtticError, NixJobError
from nix_job.core.inputs import Inputs, parse_inputs
from nix_job.core.nixhash import STORE_DIR
from nix_job.core.outcome import (
    final_exit_code,
    job_settings,
    publishing_expected,
    upload_problems,
)
from nix_job.core.problem import Problem
from nix_job.core.report import NixFacts, RunReport
from nix_job.core.secret import Secret
from nix_job.core.summary import load_template
from nix_job.frontends.base import Frontend, attach_log, detach_log
from nix_job.nix.facts import InstallRequest
from nix_job.nix.install import Bootstrap
from nix_job.nix.settings import Setting, parse_settings
from nix_job.process import scrubbed_env
from nix_job.push.plan import PushPolicy
from nix_job.push.publisher import final_roots, push_facts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """What the entrypoint hands in: the process environment (secrets already taken out of it),
    the input values keyed by their ``NIX_JOB_*`` names, and the Attic token."""

    env: Mapping[str, str]  # for child processes and the runner hints ATTIC_SERVER/ATTIC_CACHE
    inputs: Mapping[str, str]
    token: Secret | None


class Run:
    """One run's mutable state: the report being built, reported through the front end."""

    def __init__(
        self, rt: Runtime, frontend: Frontend, cancellation: Cancellation, adapters: Adapters
    ) -> None:
        self.rt = rt
        self.frontend = frontend
        self.cancellation = cancellation
        self.adapters = adapters
        self.report = RunReport(
            command=rt.inputs.get("NIX_JOB_COMMAND", ""),
            working_directory=rt.inputs.get("NIX_JOB_WORKING_DIRECTORY", "."),
            attic_enabled=True,
        )
        self.credentials = from_attic_token(usable_token(rt.token))

    def update(self, **changes: object) -> None:
        self.report = dataclasses.replace(self.report, **changes)  # type: ignore[arg-type]

    def problem(self, problem: Problem | None) -> None:
        """Record a problem for the summary and show it now (within the front end's budget)."""
        if problem is None:
            return
        self.update(problems=(*self.report.problems, problem))
        self.frontend.report(problem)

    def fail(self, error: NixJobError) -> None:
        self.problem(Problem.error(error.title, error.message, error.hint_url))


def run(
    rt: Runtime,
    frontend: Frontend,
    cancellation: Cancellation,
    adapters: Adapters | None = None,
) -> int:
    """Run the job; returns the exit code."""
    state = Run(rt, frontend, cancellation, adapters or Adapters())
    handler = attach_log(frontend)
    exit_code = 1
    try:
        with ExitStack() as cleanup:
            try:
                exit_code = _run(state, cleanup)
            except NixJobError as error:
                state.fail(error)
                exit_code = 1
            finally:
                cleanup.close()
                _finish(state)
    finally:
        detach_log(handler)
    if cancellation.cancelled:
        return cancellation.exit_code
    return exit_code


def _run(state: Run, cleanup: ExitStack) -> int:
    rt, frontend = state.rt, state.frontend
    context = frontend.context
    # SECURITY: mask every form of the token before anything can print it.
    token = usable_token(rt.token)
    if token is not None:
        frontend.mask(token)
    inputs = parse_inputs(rt.inputs, is_dir=lambda p: (context.workspace / p).is_dir())
    state.update(
        command=inputs.command,
        working_directory=inputs.working_directory,
        attic_enabled=inputs.attic_enabled,
    )

    cwd = (context.workspace / inputs.working_directory).resolve()
    work = Path(tempfile.mkdtemp(prefix="nix-job-", dir=context.temp_root))
    cleanup.callback(shutil.rmtree, work, ignore_errors=True)

    started = time.monotonic()
    boot = _bootstrap(state, inputs, work)
    if state.cancellation.cancelled:
        return state.cancellation.exit_code
    attachment, client = _attach(state, inputs, boot, cleanup)
    extra = [e for e in parse_settings([inputs.extra_conf]) if isinstance(e, tuple)]
    read = attachment.settings if attachment is not None else ()
    settings = job_settings(extra_conf=extra, read_settings=read)
    applied = _configure(state, boot, settings, work, cleanup)
    state.update(bootstrap_seconds=time.monotonic() - started)
    if state.cancellation.cancelled:
        return state.cancellation.exit_code

    attached = attachment is not None and attachment.attached
    decision, expected = _decide(state, inputs, cache_attached=attached)
    if attachment is not None and attachment.netrc is not None and attachment.facts is not None:
        # The command could read a push-capable token from the netrc while it runs.
        state.problem(state.credentials.push_token_warning(decision, attachment.facts.cache))
    nix_env = scrubbed_env(rt.env, {**applied.env, "PATH": boot.path_env})
    publisher = None
    if decision.allowed and client is not None:
        publisher = _start_publishing(state, inputs, client, nix_env, cleanup)

    exit_code = _run_command(state, inputs, cwd, {**nix_env, **cache_push_env(decision)}, work)
    # SECURITY: only Nix reads the netrc, and Nix ran inside the command: it goes now, before
    # the drain and before a cancelled run's slow cleanup (the runner kills 10 s after a cancel).
    if attachment is not None:
        _remove_netrc(state, attachment)
    if publisher is not None:
        _finish_publishing(state, inputs, publisher, cwd)
    code, problem = final_exit_code(
        command_exit=exit_code,
        require_cache_push=inputs.require_cache_push,
        publishing_expected=expected,
        push=state.report.push,
    )
    state.problem(problem)
    return code


def _attach(
    state: Run, inputs: Inputs, boot: Bootstrap, cleanup: ExitStack
) -> tuple[Attachment | None, Attic | None]:
    """Resolve the cache and attach it for reads (every run, pull requests included)."""
    rt, frontend = state.rt, state.frontend
    if not inputs.attic_enabled:
        frontend.log("nix-job: attic-enabled is false: no cache is attached or touched")
        return None, None
    resolution = resolve_target(
        server_input=inputs.attic_server, cache_input=inputs.attic_cache, env_hints=rt.env
    )
    for problem in resolution.problems:
        state.problem(problem)
    target = resolution.target
    if target is None:
        return None, None
    cleanup.callback(lambda: state.update(exchange=state.credentials.facts))  # with renewals
    creds, problems = credentials_for_run(
        attic_token=state.credentials.token,
        url=inputs.attic_token_exchange,
        audience=inputs.oidc_audience,
        cache=target.cache,
        identity=frontend,
        connect=state.adapters.exchange,
        cleanup=cleanup,
    )
    state.credentials = creds
    state.update(exchange=creds.facts)
    for problem in problems:
        state.problem(problem)
    state.problem(plaintext_token_problem(target, token_present=creds.token is not None))
    client = state.adapters.attic(target, creds.source, inputs.push_jobs + 1)
    cleanup.callback(client.close)
    netrc = boot.installation.config.get("netrc-file") or str(DEFAULT_NETRC)
    with frontend.section("nix-job: Attic cache"):
        attachment = attach_reads(
            target=target,
            pinned_key=inputs.attic_public_key,
            source=client,
            token=creds.token,
            base_netrc=Path(netrc),
            temp_root=frontend.context.temp_root,
        )
        cleanup.callback(_remove_netrc, state, attachment)
        frontend.log(attachment.describe())
    for problem in attachment.problems:
        state.problem(problem)
    state.update(cache=attachment.facts)
    creds.follow(attachment.netrc, attachment.netrc_host)  # renewed tokens reach Nix too
    creds.start()
    return attachment, client


def _remove_netrc(state: Run, attachment: Attachment) -> None:
    state.credentials.unfollow()  # no renewal may write it again
    state.problem(attachment.cleanup())


#: How long each wait of the nix.conf restore may take once the run is cancelled: the runner
#: sends SIGKILL about 10 s after its first signal.
CANCELLED_RESTORE_S = 2.0


def _restore(state: Run, applied: Applied) -> None:
    applied.restore(CANCELLED_RESTORE_S if state.cancellation.cancelled else None)


def _start_publishing(
    state: Run, inputs: Inputs, client: Attic, store_env: Mapping[str, str], cleanup: ExitStack
) -> PublishingRun | None:
    """Watcher and push session, started before the command (the gate said yes)."""
    title = "nix-job: publishing skipped"
    try:
        config = client.cache_config()
    except AtticError as error:
        state.problem(
            Problem.warning(
                title,
                "The cache configuration could not be read, so nothing is published: "
                f"{error.message}",
                error.hint_url,
            )
        )
        return None
    if config.store_dir and config.store_dir.rstrip("/") != STORE_DIR:
        state.problem(
            Problem.warning(
                title,
                f"Cache `{client.cache}` holds paths of the store {config.store_dir}, but this "
                f"machine's store is {STORE_DIR}, so nothing is published. Push to a cache "
                f"created for {STORE_DIR}.",
            )
        )
        return None
    publisher = state.adapters.publisher(
        PublisherRequest(
            attic=client,
            store_env=store_env,
            upstream_key_names=config.upstream_cache_key_names,
            exclude=inputs.push_exclude,
            policy=PushPolicy(max_size=inputs.push_max_size, closure=inputs.push_closure),
            jobs=inputs.push_jobs,
            cancel_grace_s=state.frontend.context.cancel_grace_s,
        )
    )
    cleanup.callback(publisher.close)
    publisher.start()
    return publisher


def _finish_publishing(state: Run, inputs: Inputs, publisher: PublishingRun, cwd: Path) -> None:
    """Final push of the command's outputs and a bounded drain; results into the report."""
    with state.frontend.section("nix-job: uploads"):
        outcome = publisher.finish(
            roots=final_roots(cwd, inputs.push_paths),
            timeout_s=inputs.drain_timeout,
            cancelled=lambda: state.cancellation.cancelled,
        )
    report = outcome.report
    facts = push_facts(report)
    state.update(push=facts)
    state.frontend.log(
        f"nix-job: pushed {facts.pushed_during_build} path(s) during the build and "
        f"{facts.pushed_final} at the end; {facts.already_cached} already cached, "
        f"{facts.upstream} upstream, {facts.excluded} excluded, {facts.failed} failed, "
        f"{facts.left_over} left over; drain {facts.drain_seconds:.1f} s"
    )
    state.problem(outcome.watcher_problem)
    for problem in upload_problems(
        facts, auth_error=report.auth_error, drain_timeout_s=inputs.drain_timeout
    ):
        state.problem(problem)


def _bootstrap(state: Run, inputs: Inputs, work: Path) -> Bootstrap:
    """Find Nix or install it; put it on PATH for this step and later ones."""
    frontend = state.frontend
    with frontend.section("nix-job: Nix"):
        # SECURITY: no token for nix --version & co.
        boot = state.adapters.bootstrap(
            InstallRequest.from_inputs(inputs), work, scrubbed_env(state.rt.env)
        )
    for problem in boot.problems:
        state.problem(problem)
    if boot.path_for_later_steps is not None:
        frontend.add_path(boot.path_for_later_steps)
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
    state: Run, boot: Bootstrap, settings: list[Setting], work: Path, cleanup: ExitStack
) -> Applied:
    """Apply nix.conf settings where the command's Nix reads them; restored at the end."""
    with state.frontend.section("nix-job: Nix configuration"):
        applied = state.adapters.configure(
            settings,
            boot.installation,
            work=work,
            run_id=state.frontend.context.run_id,
            env=scrubbed_env(state.rt.env, {"PATH": boot.path_env}),
        )
    cleanup.callback(_restore, state, applied)
    for problem in applied.problems:
        state.problem(problem)
    delivery = {
        "env": "NIX_CONFIG",
        "system-file": f"{applied.conf_path} (restored after)",
        "env-ignored": "NIX_CONFIG (partly ignored by the daemon)",
    }[applied.mode]
    if state.report.nix is not None:
        state.update(nix=dataclasses.replace(state.report.nix, config_delivery=delivery))
    return applied


def _decide(state: Run, inputs: Inputs, *, cache_attached: bool) -> tuple[PublishDecision, bool]:
    """The front end's publish gate; and whether the run *would* publish with its cache."""
    frontend, creds = state.frontend, state.credentials
    decision = frontend.decide(
        GateInputs(
            push_cache=inputs.push_cache,
            token_present=creds.push_capable,
            cache_attached=cache_attached,
            token_missing=None if creds.push_capable else creds.missing,
        )
    )
    verdict = "publishes" if decision.allowed else "does not publish"
    frontend.log(f"nix-job: this run {verdict}: {decision.reason}")
    if decision.notice:
        state.problem(Problem.notice("nix-job: read-only run", decision.notice))
    state.update(publish_allowed=decision.allowed, publish_reason=decision.reason)
    # With an exchange, a run the gate would let publish is expected to get a push token.
    expected_token = creds.push_capable or inputs.attic_token_exchange is not None
    with_cache = GateInputs(
        push_cache=inputs.push_cache, token_present=expected_token, cache_attached=True
    )
    if_attached = decision.allowed or frontend.decide(with_cache).allowed
    expected = publishing_expected(
        attic_enabled=inputs.attic_enabled,
        allowed=decision.allowed,
        allowed_if_attached=if_attached,
    )
    return decision, expected


def _run_command(state: Run, inputs: Inputs, cwd: Path, env: Mapping[str, str], work: Path) -> int:
    load_template()  # SECURITY: nothing is imported once the command ran (see load_template)
    state.frontend.log(f"nix-job: running the command in {cwd}")
    started = time.monotonic()
    result = state.adapters.command(
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
    state.frontend.log(
        f"nix-job: the command exited with {result.exit_code} after {result.seconds:.1f} s"
    )
    return result.exit_code


def _finish(state: Run) -> None:
    if state.cancellation.cancelled and not state.report.cancelled:
        state.update(cancelled=True)  # cancelled after the command, e.g. during the drain
    state.frontend.finish(state.report)
