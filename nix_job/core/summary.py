"""Render the job summary (Markdown) from a RunReport. Pure: no files, no environment."""

from __future__ import annotations

import re

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


def render_summary(report: RunReport) -> str:
    # Imported here: jinja2 and importlib.resources take ~40 ms to load, and the summary is
    # written after the command, so the command does not wait for them.
    from importlib import resources  # noqa: PLC0415

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
    icon, headline = _headline(report)
    first_line = report.command.strip().splitlines()[0] if report.command.strip() else ""
    if len(first_line) > MAX_COMMAND_CHARS or len(report.command.strip().splitlines()) > 1:
        first_line = first_line[:MAX_COMMAND_CHARS] + " …"
    env.filters["md"] = markdown_text
    env.filters["code"] = markdown_code
    template = env.get_template("summary.md.j2")
    return template.render(
        report=report,
        icon=icon,
        headline=headline,
        command_line=markdown_code(first_line),
        seconds=_seconds,
        size=_size,
        minutes=lambda s: "—" if s is None else minutes(s),
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
