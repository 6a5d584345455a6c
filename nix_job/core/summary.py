"""Render the job summary (Markdown) from a RunReport. Pure: no files, no environment."""

from __future__ import annotations

import functools
import re
from typing import Any

from nix_job.core.report import RunReport
from nix_job.core.token_grant import minutes

MAX_COMMAND_CHARS = 200


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def markdown_text(value: object) -> str:
    """Text from anywhere (server messages, paths, reasons) as inert Markdown on one line: HTML
    and Markdown syntax escaped, so a message cannot add links, images, tags or table cells."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Only what can start emphasis, code, links, images, strikethrough or a table cell; a
    # text on one line in a cell or list item cannot start a heading or a list.
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", text)


def markdown_code(value: object) -> str:
    """Text for inside single backticks in a table cell: no backtick, no pipe, one line."""
    return " ".join(str(value).split()).replace("`", "'").replace("|", "\\|")


def _headline(report: RunReport) -> tuple[str, str]:
    if report.cancelled:
        return "⏹️", "cancelled"
    if report.exit_code is None:
        return "❌", "stopped before the command ran"
    if report.exit_code != 0:
        return "❌", f"command failed with exit code {report.exit_code}"
    if any(p.kind == "error" for p in report.problems):
        return "⚠️", "command succeeded; nix-job reported errors"
    return "✅", "command succeeded"


@functools.cache
def _template() -> Any:
    """The summary template, compiled once (a ``jinja2.Template``)."""
    from importlib import resources  # noqa: PLC0415 - see load_template

    import jinja2  # noqa: PLC0415

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: resources.files("nix_job.core").joinpath("templates", name).read_text()
        ),
        autoescape=False,  # noqa: S701 - Markdown, not HTML; every value goes through md/code
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = markdown_text
    env.filters["code"] = markdown_code
    return env.get_template("summary.md.j2")


def load_template() -> None:
    """Import jinja2 and compile the summary template now, before the user's command runs.

    SECURITY: nix-job still holds the secrets after the command, and the command can write
    where nix-job's vendored packages and templates live (the action's checkout, the GitLab
    job's venv): nothing may be imported or read as code after it started. Not at import time
    either: jinja2 costs ~40 ms that a run stopping before its command never pays.
    """
    _template()


def render_summary(report: RunReport) -> str:
    icon, headline = _headline(report)
    first_line = report.command.strip().splitlines()[0] if report.command.strip() else ""
    if len(first_line) > MAX_COMMAND_CHARS or len(report.command.strip().splitlines()) > 1:
        first_line = first_line[:MAX_COMMAND_CHARS] + " …"
    return str(
        _template().render(
            report=report,
            icon=icon,
            headline=headline,
            command_line=markdown_code(first_line),
            seconds=_seconds,
            size=_size,
            minutes=lambda s: "—" if s is None else minutes(s),
        )
    )


def _seconds_output(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def action_outputs(report: RunReport) -> dict[str, str]:
    """The action's outputs (action.yml ``outputs``), as strings."""
    push = report.push
    return {
        "exit-code": "" if report.exit_code is None else str(report.exit_code),
        "cache-push": "true" if report.publish_allowed else "false",
        "cache-push-reason": report.publish_reason,
        "paths-pushed": str(push.pushed_during_build + push.pushed_final) if push else "0",
        "paths-failed": str(push.failed + push.left_over) if push else "0",
        "command-seconds": _seconds_output(report.command_seconds),
        "bootstrap-seconds": _seconds_output(report.bootstrap_seconds),
    }


def output_variables(report: RunReport) -> dict[str, str]:
    """The outputs as ``NIX_JOB_<NAME>`` variables (GitLab's dotenv report, other CIs)."""
    return {
        "NIX_JOB_" + name.upper().replace("-", "_"): value
        for name, value in action_outputs(report).items()
    }
