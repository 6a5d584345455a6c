"""What a harness run returns: per-step results, annotations, logs and every file's raw text.

Plain frozen values plus a few read-only helpers for assertions (``step()``, ``leaks()``,
``assert_success()``). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["success", "failure", "cancelled", "skipped"]
AnnotationKind = Literal["error", "warning", "notice"]
ANNOTATION_BUDGET_PER_STEP = 10  # per kind (actions/toolkit docs/problem-matchers.md)
ANNOTATION_BUDGET_PER_JOB = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotation:
    """One ``::error/warning/notice::`` (source ``command``) or a runner-made one (``runner``)."""

    kind: AnnotationKind
    message: str  # masked, as GitHub shows it
    title: str | None = None
    file: str | None = None
    line: int | None = None
    end_line: int | None = None
    col: int | None = None
    end_column: int | None = None
    step: str | None = None  # the step's id, or its name when it has no id
    source: Literal["command", "runner"] = "command"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandFiles:
    """Raw text each file-command file held after the step (for grepping secrets)."""

    output: str = ""
    env: str = ""
    path: str = ""
    state: str = ""
    step_summary: str = ""

    def joined(self) -> str:
        return "\n".join((self.output, self.env, self.path, self.state, self.step_summary))


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    index: int
    id: str | None
    name: str
    outcome: Outcome
    conclusion: Outcome  # success for a failed continue-on-error step
    exit_code: int | None  # None when the step did not start
    outputs: Mapping[str, str]
    env_added: Mapping[str, str]
    path_added: tuple[str, ...]
    state: Mapping[str, str]
    summary: str
    files: CommandFiles
    output: str  # masked log of the step (stdout and stderr interleaved)
    raw_output: str  # unmasked
    script: str  # the script text written to RUNNER_TEMP ('' for skipped steps)
    argv: tuple[str, ...]
    cwd: Path | None
    process_env: Mapping[str, str]  # exactly what the step process got
    groups: tuple[str, ...]
    debug: tuple[str, ...]
    signals_sent: tuple[str, ...]  # e.g. ("SIGINT", "SIGTERM") during a cancellation
    leftover_processes: tuple[str, ...]  # "pid cmdline" still in the group after exit; killed
    timed_out: bool
    error: str | None  # why the runner failed the step besides its exit code
    duration_s: float

    @property
    def label(self) -> str:
        return self.id or self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    outcome: Literal["success", "failure", "cancelled"]
    exit_code: int  # 0, else the exit code of the step that failed the action (1 if none)
    steps: tuple[StepResult, ...]
    inputs: Mapping[str, str]  # resolved (defaults applied), as the inputs context saw them
    outputs: Mapping[str, str]  # the action's outputs.*.value, evaluated at the end
    annotations: tuple[Annotation, ...]
    problems: tuple[str, ...]  # deprecated commands, summary too large, ... (each is an error)
    masks: tuple[str, ...]
    output: str  # masked log of every step
    raw_output: str  # unmasked
    runner_temp: Path
    tool_cache: Path
    event_path: Path | None
    timed_out: bool
    cancelled: bool
    duration_s: float

    def step(self, step_id: str) -> StepResult:
        for step in self.steps:
            if step.id == step_id or (step.id is None and step.name == step_id):
                return step
        known = ", ".join(s.label for s in self.steps)
        raise KeyError(f"no step {step_id!r} in this action; steps: {known}")

    def annotations_of(self, kind: AnnotationKind) -> list[Annotation]:
        return [a for a in self.annotations if a.kind == kind]

    @property
    def all_files_text(self) -> str:
        """Every GITHUB_OUTPUT/ENV/PATH/STATE/STEP_SUMMARY file of every step, concatenated."""
        return "\n".join(step.files.joined() for step in self.steps)

    def leaks(self, secret: str) -> list[str]:
        """Where ``secret`` escaped: raw log lines (other than ``::add-mask::`` lines), any
        command file, the action's outputs, any annotation. Empty list: it never escaped.
        """
        found: list[str] = []
        for line in self.raw_output.splitlines():
            if secret in line and not line.lstrip().startswith("::add-mask"):
                found.append(f"log: {line}")
        for step in self.steps:
            for kind in ("output", "env", "path", "state", "step_summary"):
                if secret in getattr(step.files, kind):
                    found.append(f"{kind} file of step {step.label}")
        for name, value in self.outputs.items():
            if secret in value:
                found.append(f"action output {name}")
        for annotation in self.annotations:
            if secret in annotation.message or secret in (annotation.title or ""):
                found.append(f"annotation {annotation.message!r}")
        return found

    def over_annotation_budget(self) -> list[str]:
        """Budget breaches GitHub would truncate: >10 of a kind in a step, >50 in the job."""
        counts: dict[tuple[str | None, str], int] = {}
        for a in self.annotations:
            if a.source == "command":
                counts[(a.step, a.kind)] = counts.get((a.step, a.kind), 0) + 1
        breaches = [
            f"step {step}: {n} {kind} annotations (limit {ANNOTATION_BUDGET_PER_STEP})"
            for (step, kind), n in counts.items()
            if n > ANNOTATION_BUDGET_PER_STEP
        ]
        total = sum(counts.values())
        if total > ANNOTATION_BUDGET_PER_JOB:
            breaches.append(f"{total} annotations in the job (limit {ANNOTATION_BUDGET_PER_JOB})")
        return breaches

    def assert_success(self) -> None:
        """Raise AssertionError with the masked log tail unless the action succeeded."""
        if self.outcome != "success":
            tail = "\n".join(self.output.splitlines()[-60:])
            failed = [f"{s.label}={s.outcome}({s.exit_code})" for s in self.steps]
            raise AssertionError(
                f"action outcome {self.outcome} (exit {self.exit_code}); steps: "
                f"{', '.join(failed)}; problems: {list(self.problems)}\n--- log tail ---\n{tail}"
            )
