"""Run a composite ``action.yml`` the way the GitHub runner does (actions/runner).

Owns the run: inputs, step ``if:``, ``env:``, ``shell:``, ``working-directory``,
``continue-on-error``, per-step file commands, stdout workflow commands and masks. Contexts come
from ``contexts``, the action from ``action_file``, processes from ``process``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.action_file import ActionDefinitionError, HarnessError, load_action
from tests.harness.commands import (
    DEPRECATED_COMMANDS,
    FileCommandError,
    Masker,
    parse_key_value_file,
    parse_path_file,
    parse_workflow_command,
)
from tests.harness.contexts import FAKE_GITHUB_TOKEN, build_runner_context
from tests.harness.expressions import (
    EvalContext,
    ExpressionError,
    JobStatus,
    evaluate_condition,
    interpolate,
    interpolate_string,
)
from tests.harness.oidc import IdTokenEndpoint
from tests.harness.process import Cancel, run_process
from tests.harness.results import (
    ActionResult,
    Annotation,
    AnnotationKind,
    CommandFiles,
    Outcome,
    StepResult,
)
from tests.harness.values import to_string, truthy

DEFAULT_TIMEOUT_S = 240.0  # below pytest-timeout's 300 s, so the harness kills its own group
SUMMARY_LIMIT_BYTES = 1024 * 1024
SHELLS = {
    "bash": ("bash --noprofile --norc -eo pipefail {0}", ".sh"),
    "sh": ("sh -e {0}", ".sh"),
    "python": ("python {0}", ".py"),
}


def stringify_input(value: object) -> str:
    """Input values reach the action as strings: True → 'true', 3 → '3'."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return to_string(value)
    raise TypeError(f"input value {value!r} must be a string, bool or number")


@dataclass(slots=True)
class _Run:
    """Mutable state of one run (the result is built from it at the end)."""

    action_dir: Path
    workspace: Path
    runner_temp: Path
    github: dict[str, Any]
    runner: dict[str, str]
    runner_vars: dict[str, str]
    caller_env: dict[str, str]
    host_env: dict[str, str]
    inputs: dict[str, str]
    imitate_act: bool
    verbose: bool
    deadline: float | None
    cancel: Cancel | None
    masker: Masker
    status: JobStatus = "success"
    env_added: dict[str, str] = field(default_factory=dict)
    path_added: list[str] = field(default_factory=list)  # most recent first
    steps_context: dict[str, Any] = field(default_factory=dict)
    annotations: list[Annotation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    raw_output: list[str] = field(default_factory=list)
    results: list[StepResult] = field(default_factory=list)
    timed_out: bool = False
    cancel_used: bool = False
    decisive_exit: int | None = None

    def env_context(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        merged = {**self.env_added, **self.caller_env}
        if extra:
            merged.update(extra)
        return merged

    def contexts(self, env: Mapping[str, str]) -> EvalContext:
        return EvalContext(
            contexts={
                "github": self.github,
                "inputs": self.inputs,
                "env": dict(env),
                "runner": self.runner,
                "steps": self.steps_context,
                "job": {"status": self.status, "container": {}, "services": {}},
            },
            status=self.status,
            workspace=self.workspace,
        )

    def annotate(
        self, kind: AnnotationKind, message: str, *, step: str | None, **props: Any
    ) -> None:
        self.annotations.append(
            Annotation(kind=kind, message=self.masker.mask(message), step=step, **props)
        )


def run_action(
    action_dir: Path,
    *,
    inputs: Mapping[str, object],
    env: Mapping[str, str],
    event_name: str,
    event_payload: Mapping[str, Any] | bytes | None,
    ref: str | None,
    workspace: Path,
    runner_temp: Path | None = None,
    tool_cache: Path | None = None,
    github: Mapping[str, str] | None = None,
    runner: Mapping[str, str] | None = None,
    host_env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    imitate_act: bool = False,
    enforce_required: bool = True,
    cancel: Cancel | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    verbose: bool | None = None,
    id_token: IdTokenEndpoint | None = None,
) -> ActionResult:
    """Run the composite action in ``action_dir`` as the step ``uses: <action_dir>``.

    - ``inputs``: the caller's ``with:`` (values stringified; unknown names give the runner's
      warning). No ``INPUT_*`` variables reach the steps unless ``imitate_act`` (nektos/act).
      ``enforce_required``: fail before any step with "Input required and not supplied: x".
      The real runner does NOT enforce ``required`` (actions/runner#1070); the action must
      validate its own inputs, so turn this off to test exactly that.
    - ``env``: the caller step's ``env:``, inherited by every composite step.
    - ``event_name``/``event_payload``: the payload is written to GITHUB_EVENT_PATH (a mapping
      as JSON, ``bytes`` verbatim to simulate a malformed file); ``None`` leaves
      GITHUB_EVENT_PATH unset and ``github.event`` empty.
    - ``ref``: GITHUB_REF (REF_NAME and REF_TYPE derived); ``None`` leaves all three unset.
    - ``github``/``runner``: overrides of github-context keys (repository, sha, token, run_id,
      ref_protected, base_ref, ...; see ``GITHUB_KEYS``) and runner keys (os, arch, name,
      environment, debug). ``github.token`` is never exported, only in the context, and masked.
    - ``host_env``: the only host variables the steps see besides the runner's: defaults are
      PATH and HOME of this process and LANG=C.UTF-8; these entries override or add.
    - ``secrets``: values masked from the start, like ``${{ secrets.X }}`` passed in ``with:``.
    - ``runner_temp``/``tool_cache``: fresh temporary directories when omitted.
    - ``cancel``: see ``Cancel``. ``timeout``: seconds for the whole run, then SIGKILL.
    - ``verbose``: stream masked output to stderr; default from ``HARNESS_VERBOSE=1``.
    - ``id_token``: the job has ``permissions: id-token: write``: every step gets
      ``ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN`` for this endpoint (the token masked).
    """
    started = time.monotonic()
    action_dir = action_dir.resolve()
    workspace = workspace.resolve()
    action = load_action(action_dir)
    if not workspace.is_dir():
        raise HarnessError(f"workspace {workspace} does not exist; create it first.")
    temp = (runner_temp or Path(tempfile.mkdtemp(prefix="harness-runner-temp-"))).resolve()
    tools = (tool_cache or Path(tempfile.mkdtemp(prefix="harness-tool-cache-"))).resolve()
    temp.mkdir(parents=True, exist_ok=True)
    tools.mkdir(parents=True, exist_ok=True)
    context = build_runner_context(
        action_dir=action_dir,
        workspace=workspace,
        runner_temp=temp,
        tool_cache=tools,
        event_name=event_name,
        event_payload=event_payload,
        ref=ref,
        github=github,
        runner=runner,
    )

    base_host = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", str(temp)),
        "LANG": "C.UTF-8",
    }
    if verbose is None:
        verbose = os.environ.get("HARNESS_VERBOSE") == "1"
    if id_token is not None:
        context.variables.update(id_token.env())
        secrets = [*secrets, id_token.request_token]
    masker = Masker([FAKE_GITHUB_TOKEN, str(context.github["token"]), *secrets])

    state = _Run(
        action_dir=action_dir,
        workspace=workspace,
        runner_temp=temp,
        github=context.github,
        runner=context.runner,
        runner_vars=context.variables,
        caller_env={k: stringify_input(v) for k, v in env.items()},
        host_env={**base_host, **(host_env or {})},
        inputs={},
        imitate_act=imitate_act,
        verbose=verbose,
        deadline=None if timeout is None else started + timeout,
        cancel=cancel,
        masker=masker,
    )
    missing = _resolve_inputs(state, action, inputs)
    if missing and enforce_required:
        for name in missing:
            message = f"Input required and not supplied: {name}"
            state.annotate("error", message, step=None, source="runner")
            state.problems.append(message)
        state.status = "failure"
    else:
        for index, step in enumerate(action["runs"]["steps"]):
            if state.timed_out:
                break
            _run_step(state, index, step)

    outputs = _evaluate_outputs(state, action)
    outcome = "cancelled" if state.status == "cancelled" else state.status
    if state.timed_out:
        outcome = "failure"
    exit_code = 0 if outcome == "success" else (state.decisive_exit or 1)
    return ActionResult(
        outcome=outcome,
        exit_code=exit_code,
        steps=tuple(state.results),
        inputs=dict(state.inputs),
        outputs=outputs,
        annotations=tuple(state.annotations),
        problems=tuple(state.problems),
        masks=masker.values,
        output="\n".join(state.output),
        raw_output="\n".join(state.raw_output),
        runner_temp=temp,
        tool_cache=tools,
        event_path=context.event_path,
        timed_out=state.timed_out,
        cancelled=state.status == "cancelled",
        duration_s=time.monotonic() - started,
    )


def _resolve_inputs(
    state: _Run, action: Mapping[str, Any], given: Mapping[str, object]
) -> list[str]:
    """Fill ``state.inputs``; return the names of required inputs that were not supplied."""
    declared: dict[str, Any] = action.get("inputs") or {}
    by_fold = {name.casefold(): name for name in declared}
    supplied: dict[str, str] = {}
    unexpected: list[str] = []
    for name, value in given.items():
        canonical = by_fold.get(name.casefold())
        if canonical is None:
            unexpected.append(name)
            supplied[name] = stringify_input(value)
        else:
            supplied[canonical] = stringify_input(value)
    if unexpected:
        state.annotate(
            "warning",
            f"Unexpected input(s) {', '.join(repr(n) for n in unexpected)}, valid inputs are "
            f"{list(declared)}",
            step=None,
            source="runner",
        )
    missing: list[str] = []
    context = state.contexts(state.env_context())
    for name, raw_spec in declared.items():
        spec = raw_spec if isinstance(raw_spec, dict) else {}
        if name in supplied:
            continue
        if "default" in spec and spec["default"] is not None:
            try:
                supplied[name] = interpolate_string(str(spec["default"]), context)
            except ExpressionError as exc:
                raise ActionDefinitionError(f"inputs.{name}.default: {exc}") from exc
        else:
            if str(spec.get("required", "false")).casefold() == "true":
                missing.append(name)
            supplied[name] = ""
    state.inputs.update(supplied)
    return missing


def _evaluate_outputs(state: _Run, action: Mapping[str, Any]) -> dict[str, str]:
    outputs: dict[str, str] = {}
    context = state.contexts(state.env_context())
    for name, spec in (action.get("outputs") or {}).items():
        template = spec.get("value", "") if isinstance(spec, dict) else ""
        try:
            outputs[name] = interpolate_string(str(template or ""), context)
        except ExpressionError as exc:
            message = f"Error evaluating output {name!r}: {exc}"
            state.annotate("error", message, step=None, source="runner")
            state.problems.append(message)
            if state.status == "success":
                state.status = "failure"
    return outputs


@dataclass(slots=True)
class _StepLog:
    label: str
    output: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    debug: list[str] = field(default_factory=list)
    stop_token: str | None = None


def _handle_line(state: _Run, log: _StepLog, line: str) -> None:
    """Process one output line: workflow commands first, then mask and record it."""
    log.raw.append(line)
    state.raw_output.append(line)
    if log.stop_token is not None:
        if line.strip() == f"::{log.stop_token}::":
            log.stop_token = None
    else:
        command = parse_workflow_command(line)
        if command is not None:
            _apply_command(state, log, command.name, command.properties, command.data)
    masked = state.masker.mask(line)
    log.output.append(masked)
    state.output.append(masked)
    if state.verbose:
        sys.stderr.write(f"[harness:{log.label}] {masked}\n")
        sys.stderr.flush()


def _apply_command(
    state: _Run, log: _StepLog, name: str, props: Mapping[str, str], data: str
) -> None:
    if name == "add-mask":
        if not state.masker.add(data):
            state.annotate(
                "warning",
                "Can't add secret mask for empty string in ##[add-mask] command.",
                step=log.label,
                source="runner",
            )
    elif name in ("error", "warning", "notice"):

        def number(key: str) -> int | None:
            value = props.get(key)
            return int(value) if value is not None and value.strip().isdigit() else None

        state.annotate(
            name,  # type: ignore[arg-type]
            data,
            step=log.label,
            title=props.get("title"),
            file=props.get("file"),
            line=number("line"),
            end_line=number("endLine"),
            col=number("col"),
            end_column=number("endColumn"),
        )
    elif name == "group":
        log.groups.append(data)
    elif name == "debug":
        log.debug.append(data)
    elif name == "stop-commands":
        log.stop_token = data or None
    elif name in DEPRECATED_COMMANDS:
        message = (
            f"step {log.label} used the deprecated ::{name}:: command; use the "
            "GITHUB_OUTPUT / GITHUB_ENV / GITHUB_PATH / GITHUB_STATE files instead "
            "(the harness does not apply it)"
        )
        state.problems.append(message)
        state.annotate("error", message, step=log.label, source="runner")


def _shell_argv(shell: str, script: Path, path_value: str) -> list[str]:
    template, _ = SHELLS.get(shell, (shell, ""))
    if "{0}" not in template:
        raise ExpressionError(
            f"shell {shell!r} is not supported: use bash, sh, python or a command with {{0}} "
            "(pwsh, powershell and cmd are not available to the harness)."
        )
    argv = [str(script) if part == "{0}" else part for part in shlex.split(template)]
    found = shutil.which(argv[0], path=path_value)
    if found is None:
        raise ExpressionError(f"shell program {argv[0]!r} was not found in PATH {path_value!r}.")
    argv[0] = found
    return argv


def _process_env(
    state: _Run, step_env: Mapping[str, str], files: Mapping[str, Path]
) -> dict[str, str]:
    env = dict(state.host_env)
    env.update(state.env_added)
    if state.imitate_act:
        for name, value in state.inputs.items():
            env["INPUT_" + name.upper().replace(" ", "_")] = value
    env.update(state.caller_env)
    env.update(step_env)
    env.update(state.runner_vars)
    env.update({key: str(path) for key, path in files.items()})
    if state.path_added:
        env["PATH"] = os.pathsep.join([*state.path_added, env.get("PATH", "")])
    return env


def _run_step(state: _Run, index: int, step: Mapping[str, Any]) -> None:
    step_id: str | None = step.get("id")
    started = time.monotonic()
    outer_env = state.env_context()
    context = state.contexts(outer_env)
    if step.get("name"):
        try:
            display = interpolate_string(str(step["name"]), context)
        except ExpressionError:
            display = str(step["name"])
    elif "run" in step:
        lines = str(step["run"]).strip().splitlines()
        display = f"Run {lines[0]}" if lines else f"Run step {index}"
    else:
        display = f"Run {step['uses']}"
    label = step_id or display

    def finish(outcome: Outcome, **fields: Any) -> None:
        conclusion: Outcome = outcome
        if outcome == "failure" and fields.pop("continue_on_error", False):
            conclusion = "success"
        fields.pop("continue_on_error", None)
        defaults: dict[str, Any] = {
            "exit_code": None,
            "outputs": {},
            "env_added": {},
            "path_added": (),
            "state": {},
            "summary": "",
            "files": CommandFiles(),
            "output": "",
            "raw_output": "",
            "script": "",
            "argv": (),
            "cwd": None,
            "process_env": {},
            "groups": (),
            "debug": (),
            "signals_sent": (),
            "leftover_processes": (),
            "timed_out": False,
            "error": None,
        }
        defaults.update(fields)
        result = StepResult(
            index=index,
            id=step_id,
            name=display,
            outcome=outcome,
            conclusion=conclusion,
            duration_s=time.monotonic() - started,
            **defaults,
        )
        state.results.append(result)
        if step_id is not None:
            state.steps_context[step_id] = {
                "outputs": dict(result.outputs),
                "outcome": outcome,
                "conclusion": conclusion,
            }
        if result.error:
            state.annotate("error", result.error, step=label, source="runner")
        if outcome == "cancelled":
            state.status = "cancelled"
            state.decisive_exit = state.decisive_exit or result.exit_code or None
        elif conclusion == "failure" and state.status == "success":
            state.status = "failure"
            state.decisive_exit = result.exit_code or None

    # 1. the condition, with the implicit success() &&
    try:
        run_it = evaluate_condition(str(step.get("if") or ""), context)
    except ExpressionError as exc:
        finish("failure", error=f"Error evaluating 'if' of step {label}: {exc}")
        return
    if not run_it:
        finish("skipped")
        return
    if "uses" in step:
        raise HarnessError(
            f"harness cannot run uses: {step['uses']} (step {label}); only run: steps are "
            "emulated. Make the step's if: false in this test, or test it on a real runner."
        )

    # 2. the step's own fields
    try:
        coe_text = str(step.get("continue-on-error", "false")).strip()
        if "${{" in coe_text:
            continue_on_error = truthy(interpolate(coe_text, context))
        elif coe_text.casefold() in ("true", "false"):
            continue_on_error = coe_text.casefold() == "true"
        else:
            raise ExpressionError(
                f"continue-on-error is {coe_text!r}; write true, false or a ${{{{ }}}} expression."
            )
        step_env = {
            str(k): interpolate_string(str(v if v is not None else ""), context)
            for k, v in (step.get("env") or {}).items()
        }
        inner = state.contexts(state.env_context(step_env))
        script_text = interpolate_string(str(step["run"]), inner)
        shell = interpolate_string(str(step["shell"]), inner).strip()
        wd_raw = step.get("working-directory")
        cwd = state.workspace
        if wd_raw:
            cwd = state.workspace / interpolate_string(str(wd_raw), inner)
    except ExpressionError as exc:
        finish("failure", error=f"Error evaluating step {label}: {exc}")
        return

    # 3. fresh file-command files, the script, the process environment
    commands_dir = state.runner_temp / "_runner_file_commands"
    commands_dir.mkdir(parents=True, exist_ok=True)
    suffix = uuid.uuid4().hex
    files = {
        "GITHUB_OUTPUT": commands_dir / f"set_output_{suffix}",
        "GITHUB_ENV": commands_dir / f"set_env_{suffix}",
        "GITHUB_PATH": commands_dir / f"add_path_{suffix}",
        "GITHUB_STATE": commands_dir / f"save_state_{suffix}",
        "GITHUB_STEP_SUMMARY": commands_dir / f"step_summary_{suffix}",
    }
    for path in files.values():
        path.write_text("")
    extension = SHELLS.get(shell, ("", ""))[1]
    script_path = state.runner_temp / f"{uuid.uuid4()}{extension}"
    script_path.write_text(script_text)
    process_env = _process_env(state, step_env, files)
    process_env["GITHUB_ACTION"] = step_id or f"__run_{index}"
    common: dict[str, Any] = {
        "script": script_text,
        "cwd": cwd,
        "process_env": process_env,
        "continue_on_error": continue_on_error,
    }
    try:
        argv = _shell_argv(shell, script_path, process_env["PATH"])
    except ExpressionError as exc:
        finish("failure", error=f"Step {label}: {exc}", **common)
        return
    common["argv"] = tuple(argv)
    if not cwd.is_dir():
        finish(
            "failure",
            error=f"Step {label}: working directory {cwd} does not exist; create it or fix "
            "working-directory:.",
            **common,
        )
        return

    # 4. run it
    log = _StepLog(label=label)
    cancel = state.cancel
    if cancel is not None and (
        state.cancel_used or (cancel.step is not None and cancel.step not in (step_id, display))
    ):
        cancel = None
    if cancel is not None:
        state.cancel_used = True
    outcome_info = run_process(
        argv,
        env=process_env,
        cwd=cwd,
        on_line=lambda line: _handle_line(state, log, line),
        deadline=state.deadline,
        cancel=cancel,
    )
    code = outcome_info.exit_code
    exit_code = 128 - code if code < 0 else code
    errors: list[str] = []
    if outcome_info.timed_out:
        state.timed_out = True
        errors.append(f"Step {label} was killed: the harness timeout expired.")
    if outcome_info.pipe_left_open:
        errors.append(
            f"Step {label}: a process outside its group kept the output pipe open; later output "
            "was not captured."
        )

    # 5. file commands: read raw, parse; a grammar error fails the step like on the runner
    raw = {key: path.read_text(errors="replace") for key, path in files.items()}
    command_files = CommandFiles(
        output=raw["GITHUB_OUTPUT"],
        env=raw["GITHUB_ENV"],
        path=raw["GITHUB_PATH"],
        state=raw["GITHUB_STATE"],
        step_summary=raw["GITHUB_STEP_SUMMARY"],
    )
    outputs: dict[str, str] = {}
    env_added: dict[str, str] = {}
    saved: dict[str, str] = {}
    try:
        outputs = parse_key_value_file(raw["GITHUB_OUTPUT"], command="output")
        env_added = parse_key_value_file(raw["GITHUB_ENV"], command="env")
        saved = parse_key_value_file(raw["GITHUB_STATE"], command="state")
    except FileCommandError as exc:
        errors.append(f"Step {label}: {exc}")
    path_added = parse_path_file(raw["GITHUB_PATH"])
    summary = raw["GITHUB_STEP_SUMMARY"]
    if len(summary.encode()) > SUMMARY_LIMIT_BYTES:
        message = (
            f"$GITHUB_STEP_SUMMARY of step {label} is {len(summary.encode()) // 1024}k; the "
            "runner aborts uploads above 1024k. Keep the summary bounded."
        )
        state.problems.append(message)
        state.annotate("error", message, step=label, source="runner")
    state.env_added.update(env_added)
    for directory in path_added:
        if directory in state.path_added:
            state.path_added.remove(directory)
        state.path_added.insert(0, directory)

    if outcome_info.cancelled:
        outcome: Outcome = "cancelled"
    elif exit_code != 0 or errors:
        outcome = "failure"
        if exit_code != 0:
            state.annotate(
                "error",
                f"Process completed with exit code {exit_code}.",
                step=label,
                source="runner",
            )
    else:
        outcome = "success"
    finish(
        outcome,
        exit_code=exit_code,
        outputs=outputs,
        env_added=env_added,
        path_added=tuple(path_added),
        state=saved,
        summary=summary,
        files=command_files,
        output="\n".join(log.output),
        raw_output="\n".join(log.raw),
        groups=tuple(log.groups),
        debug=tuple(log.debug),
        signals_sent=outcome_info.signals_sent,
        leftover_processes=outcome_info.leftover_processes,
        timed_out=outcome_info.timed_out,
        error="\n".join(errors) or None,
        **common,
    )
