"""Contract: action.yml inputs = env mapping = Inputs fields = README tables; outputs too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nix_job.core.inputs import INPUT_SPECS, Inputs
from nix_job.core.report import RunReport
from nix_job.core.summary import action_outputs

ROOT = Path(__file__).resolve().parent.parent
ACTION: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
README = (ROOT / "README.md").read_text()


def _run_step() -> dict[str, Any]:
    steps = {s.get("id"): s for s in ACTION["runs"]["steps"]}
    step: dict[str, Any] = steps["run"]
    return step


def _readme_rows(first_header: str) -> dict[str, list[str]]:
    """Rows of every README table whose first column header is ``first_header``."""
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in README.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells and cells[0] == first_header:
            in_table = True
            continue
        if in_table and cells and set(cells[0]) <= {"-", ":"}:
            continue
        if in_table and cells:
            rows[cells[0].strip("`")] = cells
        else:
            in_table = False
    return rows


def test_action_inputs_are_exactly_the_spec_table() -> None:
    assert list(ACTION["inputs"]) == [s.name for s in INPUT_SPECS]
    for spec in INPUT_SPECS:
        declared = ACTION["inputs"][spec.name]
        assert declared["default"] == spec.default, spec.name
        assert declared["description"] == spec.description, spec.name
        assert declared.get("required", False) is False, spec.name


def test_every_input_is_mapped_into_the_run_step_env() -> None:
    env = _run_step()["env"]
    for spec in INPUT_SPECS:
        assert env.get(spec.env) == f"${{{{ inputs.{spec.name} }}}}", spec.name
    mapped = {k for k in env if k.startswith("NIX_JOB_") and not k.startswith("NIX_JOB_INTERNAL_")}
    assert mapped == {s.env for s in INPUT_SPECS}


def test_parsed_fields_match_the_inputs() -> None:
    """Every input is a field of ``Inputs``, except credentials, which only the entrypoint
    reads (as secrets)."""
    assert {s.field for s in INPUT_SPECS if not s.secret} == set(Inputs.__dataclass_fields__)
    assert [s.name for s in INPUT_SPECS if s.secret] == ["github-token"]


def test_readme_inputs_table_matches() -> None:
    rows = _readme_rows("Input")
    assert set(rows) == {s.name for s in INPUT_SPECS}
    for spec in INPUT_SPECS:
        _, description, required, default = rows[spec.name]
        assert description.replace("\\|", "|") == spec.description, spec.name
        assert required == "no", spec.name
        assert default == (f"`{spec.default}`" if spec.default else "_empty_"), spec.name


def test_readme_outputs_table_matches() -> None:
    rows = _readme_rows("Output")
    assert set(rows) == set(ACTION["outputs"])
    for name, declared in ACTION["outputs"].items():
        assert rows[name][1] == declared["description"], name
        assert declared["value"] == f"${{{{ steps.run.outputs.{name} }}}}", name


def test_outputs_written_by_the_entrypoint_are_the_declared_ones() -> None:
    report = RunReport(command="true", working_directory=".", attic_enabled=True)
    assert list(action_outputs(report)) == list(ACTION["outputs"])


def test_no_expression_inside_any_run_body() -> None:
    for step in ACTION["runs"]["steps"]:
        assert "${{" not in step.get("run", ""), step.get("id")


def test_the_token_is_never_an_input() -> None:
    # attic-token-exchange is the exchange service's URL, not a credential.
    names = set(ACTION["inputs"]) - {"attic-token-exchange"}
    assert not any("token" in name and "attic" in name for name in names)
    assert "ATTIC_TOKEN" not in _run_step()["env"]


def test_readme_quick_start_has_exactly_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\./scripts/\w+", quick, re.MULTILINE)
    assert commands == ["./scripts/demo", "./scripts/test"]


def _readme_anchors() -> set[str]:
    anchors: set[str] = set()
    for line in README.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_every_help_link_in_the_code_points_at_a_readme_heading() -> None:
    from nix_job.core import errors  # noqa: PLC0415 - the error classes are what is under test

    hints = {
        cls.hint
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.NixJobError)
    }
    for path in (ROOT / "nix_job").rglob("*.py"):
        hints.update(re.findall(r'DOCS_URL \+ "([a-z0-9-]+)"', path.read_text()))
    missing = hints - _readme_anchors()
    assert not missing, f"README has no heading for: {sorted(missing)}"


def test_the_readmes_exchange_url_requests_the_example_policys_audience() -> None:
    """Following the README with the example policy works: nix-job's default audience (the
    exchange URL's origin) and the GitLab snippet's `aud:` are the policy's issuers' audience."""
    import tomllib  # noqa: PLC0415 - only here

    from nix_job.core.urls import origin  # noqa: PLC0415

    section = README.split("## Publishing with no long-lived secret", 1)[1].split("\n## ", 1)[0]
    urls = set(
        re.findall(r"(?:attic-token-exchange:|NIX_JOB_ATTIC_TOKEN_EXCHANGE:) (\S+)", section)
    )
    auds = set(re.findall(r"aud: (\S+)", section))
    policy = tomllib.loads((ROOT / "docs" / "examples" / "policy.toml").read_text())
    audiences = {issuer["audience"] for issuer in policy["issuers"].values()}
    assert len(urls) == 1
    assert {origin(url) for url in urls} == auds == audiences
