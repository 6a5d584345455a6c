"""Contract: action.yml inputs = env mapping = Inputs fields = README tables; outputs too; the
GitLab component's inputs = the same table, passed to nix-job as its NIX_JOB_* variables."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

import nix_job
from nix_job.core.input_specs import INPUT_SPECS
from nix_job.core.inputs import Inputs
from nix_job.core.report import RunReport
from nix_job.core.summary import action_outputs
from nix_job.frontends.gitlab.frontend import DOTENV_FILE, SUMMARY_FILE
from nix_job.nix.facts import DEFAULT_NIX_VERSION

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


# --- the GitLab CI/CD component (templates/nix-job.yml) --------------------------------------

COMPONENT_HEADER, COMPONENT_BODY = yaml.safe_load_all((ROOT / "templates/nix-job.yml").read_text())
COMPONENT_INPUTS: dict[str, dict[str, Any]] = COMPONENT_HEADER["spec"]["inputs"]
#: The component's own inputs: where its job goes and how nix-job gets there.
COMPONENT_ONLY = ["job-name", "stage", "image", "source"]
NIX_JOB_SPECS = [spec for spec in INPUT_SPECS if not spec.secret]
#: Passed to nix-job exactly as written: bash expands the command itself, a regular expression
#: uses `$` as an anchor, nix.conf has no variables.
UNEXPANDED = {"command", "push-exclude", "extra-conf"}


def _component_job() -> dict[str, Any]:
    (job,) = COMPONENT_BODY.values()
    assert isinstance(job, dict)
    return job


def _as_nix_job_reads_it(value: object) -> str:
    """A spec:inputs default as the string nix-job's parser gets."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_component_inputs_are_the_spec_table_less_credentials_plus_its_own() -> None:
    assert list(COMPONENT_INPUTS) == COMPONENT_ONLY + [s.name for s in NIX_JOB_SPECS]
    for spec in NIX_JOB_SPECS:
        declared = COMPONENT_INPUTS[spec.name]
        assert _as_nix_job_reads_it(declared["default"]) == spec.default, spec.name
        assert declared["description"] == spec.description, spec.name
    for name, declared in COMPONENT_INPUTS.items():
        assert "default" in declared, f"{name}: an input without a default is required"
        assert declared.get("description"), name


def test_component_input_types_follow_the_defaults() -> None:
    """true/false defaults are boolean inputs and whole-number defaults number inputs, so
    GitLab checks them when the pipeline is created; everything else is a string."""
    for spec in NIX_JOB_SPECS:
        kind = COMPONENT_INPUTS[spec.name].get("type", "string")
        if spec.default in ("true", "false"):
            assert kind == "boolean", spec.name
        elif spec.default.isdecimal():
            assert kind == "number", spec.name
        else:
            assert kind == "string", spec.name


def test_every_component_input_reaches_nix_job_as_its_variable() -> None:
    variables = _component_job()["variables"]
    for spec in NIX_JOB_SPECS:
        reference = f"$[[ inputs.{spec.name} ]]"
        value = variables[spec.env]
        if spec.name in UNEXPANDED:
            assert value == {"value": reference, "expand": False}, spec.name
        elif COMPONENT_INPUTS[spec.name].get("type", "string") == "string":
            assert value == reference, spec.name
        else:
            # Job variables take only strings and integers: a typed input goes inside a string
            # (with a space nix-job's parser strips), never as the whole value.
            assert value == reference + " ", spec.name
    assert variables["NIX_JOB_SOURCE"] == "$[[ inputs.source ]]"
    assert {k for k in variables if k.startswith("NIX_JOB_")} == {
        *(s.env for s in NIX_JOB_SPECS),
        "NIX_JOB_SOURCE",
    }


def test_the_component_job_is_its_inputs_and_one_script_line() -> None:
    assert list(COMPONENT_BODY) == ["$[[ inputs.job-name ]]"]  # one job, no global keywords
    job = _component_job()
    assert job["stage"] == "$[[ inputs.stage ]]"
    assert job["image"] == "$[[ inputs.image ]]"
    assert job["script"] == ["nix-job run"]
    assert job["artifacts"] == {
        "when": "always",
        "paths": [SUMMARY_FILE],
        "reports": {"dotenv": DOTENV_FILE},
    }


def test_the_token_is_never_a_component_input_or_variable() -> None:
    # attic-token-exchange names a URL, not a credential; no input may carry one.
    assert not any(name.endswith("token") for name in COMPONENT_INPUTS)
    assert not any(spec.name in COMPONENT_INPUTS for spec in INPUT_SPECS if spec.secret)
    assert "ATTIC_TOKEN" not in _component_job()["variables"]
    # The job never names it (nix-job reads it); NIX_JOB_ATTIC_TOKEN_EXCHANGE is another name.
    assert not re.search(r"(?<![A-Z_])ATTIC_TOKEN(?![A-Z_])", str(COMPONENT_BODY))


def test_the_component_installs_its_own_release_and_runs_in_the_nix_it_defaults_to() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert COMPONENT_INPUTS["source"]["default"] == (
        f"git+https://github.com/nix-job/nix-job@v{version}"
    )
    assert nix_job.__version__ == version  # what `nix-job --version` and the User-Agent say
    assert COMPONENT_INPUTS["image"]["default"] == f"docker.io/nixos/nix:{DEFAULT_NIX_VERSION}"


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
