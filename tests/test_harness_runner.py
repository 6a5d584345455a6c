"""The composite-action harness: file-command grammar, workflow commands, and toy actions run
end to end (inputs, env and PATH propagation, step conditions, masks, annotations, cancellation).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    FAKE_GITHUB_TOKEN,
    ActionDefinitionError,
    ActionResult,
    Cancel,
    HarnessError,
    run_action,
)
from tests.harness.commands import (
    FileCommandError,
    Masker,
    WorkflowCommand,
    parse_key_value_file,
    parse_path_file,
    parse_workflow_command,
)

# ---------------------------------------------------------------- pure parsers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("A=1\n", {"A": "1"}, id="simple"),
        pytest.param("A=1", {"A": "1"}, id="no-trailing-newline"),
        pytest.param("A=x=y\n", {"A": "x=y"}, id="value-keeps-later-equals"),
        pytest.param("A=\n", {"A": ""}, id="empty-value"),
        pytest.param("A=1\nA=2\n", {"A": "2"}, id="later-record-wins"),
        pytest.param("\n\nA=1\n\n", {"A": "1"}, id="blank-lines-skipped"),
        pytest.param("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}, id="crlf"),
        pytest.param("A<<EOF\nl1\nl2\nEOF\n", {"A": "l1\nl2"}, id="heredoc"),
        pytest.param("A<<EOF\nEOF\n", {"A": ""}, id="empty-heredoc"),
        pytest.param("A<<EOF\n\nx\n\nEOF\n", {"A": "\nx\n"}, id="heredoc-keeps-blank-lines"),
        pytest.param("A<<EOF\nB=1\nEOF\nC=2\n", {"A": "B=1", "C": "2"}, id="heredoc-then-record"),
        pytest.param("A<<D=1\nv\nD=1\n", {"A": "v"}, id="heredoc-delimiter-with-equals"),
        pytest.param("A=B<<C\n", {"A": "B<<C"}, id="equals-before-heredoc-is-a-value"),
        pytest.param("A<<EOF\n EOF\nEOF\n", {"A": " EOF"}, id="delimiter-must-match-exactly"),
    ],
)
def test_key_value_files_follow_the_runner_grammar(text: str, expected: dict[str, str]) -> None:
    assert parse_key_value_file(text, command="output") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("=1\n", "the name must not be empty", id="empty-name"),
        pytest.param("<<EOF\nx\nEOF\n", "the name must not be empty", id="empty-heredoc-name"),
        pytest.param("A<<\nx\n", "delimiter after '<<' is empty", id="empty-delimiter"),
        pytest.param("A<<EOF\nx\n", "matching delimiter not found 'EOF'", id="missing-delimiter"),
        pytest.param("A<<EOF\nxEOF\n", "matching delimiter not found", id="glued-delimiter"),
        pytest.param("JUSTANAME\n", "invalid format 'JUSTANAME'", id="no-separator"),
        pytest.param("A\0B=1\n", "NUL", id="nul-in-name"),
    ],
)
def test_bad_key_value_files_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(FileCommandError, match=re.escape(fragment)):
        parse_key_value_file(text, command="env")


def test_path_file_lists_non_blank_lines_in_order() -> None:
    assert parse_path_file("/a\n\n  \n/b c\r\n") == ["/a", "/b c"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            "::add-mask::s3cret", WorkflowCommand(name="add-mask", data="s3cret"), id="add-mask"
        ),
        pytest.param(
            "::add-mask ::s3cret",
            WorkflowCommand(name="add-mask", data="s3cret"),
            id="add-mask-with-space-github-action-utils",
        ),
        pytest.param(
            "  ::debug::x", WorkflowCommand(name="debug", data="x"), id="leading-space-allowed"
        ),
        pytest.param(
            "::error file=a%2Cb.py,line=3,title=T%3A 100%25::m%0Aline%25",
            WorkflowCommand(
                name="error",
                properties={"file": "a,b.py", "line": "3", "title": "T: 100%"},
                data="m\nline%",
            ),
            id="properties-and-data-unescaped",
        ),
        pytest.param(
            "::warning title=,file=x::m",
            WorkflowCommand(name="warning", properties={"file": "x"}, data="m"),
            id="empty-property-dropped",
        ),
        pytest.param(
            "::notice::%250A",
            WorkflowCommand(name="notice", data="%0A"),
            id="percent-unescaped-last",
        ),
        pytest.param("::group::Build", WorkflowCommand(name="group", data="Build"), id="group"),
        pytest.param("::endgroup::", WorkflowCommand(name="endgroup"), id="endgroup"),
        pytest.param(
            "::set-output name=a::b",
            WorkflowCommand(name="set-output", properties={"name": "a"}, data="b"),
            id="deprecated-set-output-recognised",
        ),
        pytest.param("::unknown::x", None, id="unknown-command-is-text"),
        pytest.param("::add-mask", None, id="unterminated"),
        pytest.param("text ::add-mask::x", None, id="command-mid-line-is-text"),
    ],
)
def test_workflow_commands_parse_like_the_runner(
    line: str, expected: WorkflowCommand | None
) -> None:
    assert parse_workflow_command(line) == expected


def test_masker_masks_registered_values_per_line() -> None:
    masker = Masker(["tok", "  "])
    masker.add("token-long")
    assert masker.values == ("token-long", "tok")
    assert masker.mask("a token-long tok b") == "a *** *** b"
    masker.add("two\nlines")
    assert masker.mask("two") == "two"


# ---------------------------------------------------------------- toy actions


def run_toy(tmp_path: Path, action_yaml: str, **overrides: Any) -> ActionResult:
    action_dir = tmp_path / "action"
    action_dir.mkdir(exist_ok=True)
    (action_dir / "action.yml").write_text(textwrap.dedent(action_yaml))
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    arguments: dict[str, Any] = {
        "inputs": {},
        "env": {},
        "event_name": "push",
        "event_payload": {"repository": {"default_branch": "main"}},
        "ref": "refs/heads/main",
        "workspace": workspace,
        "runner_temp": tmp_path / "runner-temp",
        "tool_cache": tmp_path / "tool-cache",
        "timeout": 60.0,
    }
    arguments.update(overrides)
    return run_action(action_dir, **arguments)


def out(result: ActionResult, step: str) -> str:
    return result.step(step).output


def test_inputs_get_defaults_including_expressions_and_are_strings(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        inputs:
          flag: {required: false}
          count: {default: 3}
          token: {default: "${{ github.token }}"}
          ref-name: {default: "ref=${{ github.ref_name }}"}
        runs:
          using: composite
          steps:
            - id: show
              shell: bash
              env: {FLAG: "${{ inputs.flag }}", COUNT: "${{ inputs.count }}"}
              run: echo "flag=$FLAG count=$COUNT"
        """,
        inputs={"FLAG": True},
    )
    result.assert_success()
    assert result.inputs == {
        "flag": "true",
        "count": "3",
        "token": FAKE_GITHUB_TOKEN,
        "ref-name": "ref=main",
    }
    assert out(result, "show") == "flag=true count=3"


REQUIRED = """
    inputs:
      who: {required: true}
    runs:
      using: composite
      steps:
        - id: greet
          shell: bash
          env: {WHO: "${{ inputs.who }}"}
          run: echo "who=[$WHO]"
    """


def test_missing_required_input_fails_before_any_step(tmp_path: Path) -> None:
    result = run_toy(tmp_path, REQUIRED)
    assert result.outcome == "failure"
    assert result.steps == ()
    assert [a.message for a in result.annotations_of("error")] == [
        "Input required and not supplied: who"
    ]


def test_required_is_not_enforced_when_imitating_the_real_runner(tmp_path: Path) -> None:
    result = run_toy(tmp_path, REQUIRED, enforce_required=False)
    result.assert_success()
    assert out(result, "greet") == "who=[]"


def test_unknown_inputs_warn_and_known_inputs_match_case_insensitively(tmp_path: Path) -> None:
    result = run_toy(tmp_path, REQUIRED, inputs={"WHO": "me", "whom": "x"})
    result.assert_success()
    assert out(result, "greet") == "who=[me]"
    assert [a.message for a in result.annotations_of("warning")] == [
        "Unexpected input(s) 'whom', valid inputs are ['who']"
    ]


NO_ENV_MAPPING = """
    inputs:
      cache-name: {default: dflt}
    runs:
      using: composite
      steps:
        - id: read
          shell: bash
          run: |
            echo "inputs=[$(env | grep -c '^INPUT_' || true)]"
            echo "value=[${INPUT_CACHE-NAME:-}]" 2>/dev/null || true
            printenv 'INPUT_CACHE-NAME' || echo "unset"
    """


def test_composite_steps_get_no_input_variables(tmp_path: Path) -> None:
    result = run_toy(tmp_path, NO_ENV_MAPPING, inputs={"cache-name": "ci"})
    result.assert_success()
    assert "inputs=[0]" in out(result, "read")
    assert out(result, "read").endswith("unset")
    assert not any(k.startswith("INPUT_") for k in result.step("read").process_env)


def test_imitate_act_exports_input_variables(tmp_path: Path) -> None:
    result = run_toy(tmp_path, NO_ENV_MAPPING, inputs={"cache-name": "ci"}, imitate_act=True)
    result.assert_success()
    assert "inputs=[1]" in out(result, "read")
    assert out(result, "read").endswith("ci")


def test_env_and_path_reach_later_steps_only(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "harness-tool"
    tool.write_text("#!/bin/sh\necho tool-ran\n")
    tool.chmod(0o755)
    result = run_toy(
        tmp_path,
        f"""
        runs:
          using: composite
          steps:
            - id: write
              shell: bash
              run: |
                echo "FOO=bar" >> "$GITHUB_ENV"
                {{ echo "MULTI<<ghadelimiter_1"; echo "l1"; echo "l2"; echo "ghadelimiter_1"; }} \
                  >> "$GITHUB_ENV"
                echo "{bindir}" >> "$GITHUB_PATH"
                echo "same=[${{FOO:-}}] tool=[$(command -v harness-tool || true)]"
            - id: read
              shell: bash
              env: {{FROM_CONTEXT: "${{{{ env.FOO }}}}"}}
              run: |
                echo "foo=[$FOO] ctx=[$FROM_CONTEXT] multi=[$MULTI]"
                harness-tool
                echo "first=${{PATH%%:*}}"
        """,
    )
    result.assert_success()
    assert out(result, "write") == "same=[] tool=[]"
    assert out(result, "read") == f"foo=[bar] ctx=[bar] multi=[l1\nl2]\ntool-ran\nfirst={bindir}"
    assert result.step("write").env_added == {"FOO": "bar", "MULTI": "l1\nl2"}
    assert result.step("write").path_added == (str(bindir),)


def test_each_step_gets_fresh_command_files(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: one
              shell: bash
              run: echo "x=1" >> "$GITHUB_OUTPUT"; echo "# one" >> "$GITHUB_STEP_SUMMARY"
            - id: two
              shell: bash
              run: |
                echo "size=$(wc -c < "$GITHUB_OUTPUT")"
                echo "$GITHUB_OUTPUT $GITHUB_ENV $GITHUB_PATH $GITHUB_STATE $GITHUB_STEP_SUMMARY"
                echo "y=2" >> "$GITHUB_OUTPUT"; echo "s=3" >> "$GITHUB_STATE"
        """,
    )
    result.assert_success()
    one, two = result.step("one"), result.step("two")
    assert one.outputs == {"x": "1"}
    assert two.outputs == {"y": "2"}
    assert one.summary == "# one\n"
    assert two.summary == ""
    assert two.state == {"s": "3"}
    assert two.output.splitlines()[0] == "size=0"
    paths = two.output.splitlines()[1].split()
    assert len(set(paths)) == 5
    assert all(p.startswith(str(result.runner_temp)) for p in paths)
    assert one.process_env["GITHUB_OUTPUT"] != two.process_env["GITHUB_OUTPUT"]
    assert "x=1" in result.all_files_text
    assert "# one" in result.all_files_text


def test_env_precedence_step_over_caller_over_github_env(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - shell: bash
              run: |
                echo "A=from-file" >> "$GITHUB_ENV"; echo "B=from-file" >> "$GITHUB_ENV"
                echo "C=from-file" >> "$GITHUB_ENV"
                echo "GITHUB_WORKSPACE=/hijack" >> "$GITHUB_ENV"
            - id: show
              shell: bash
              env: {A: from-step}
              run: echo "$A $B $C $GITHUB_WORKSPACE"
        """,
        env={"A": "from-caller", "B": "from-caller"},
    )
    result.assert_success()
    assert out(result, "show") == f"from-step from-caller from-file {tmp_path / 'workspace'}"


def test_action_outputs_are_evaluated_at_the_end(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        outputs:
          path: {value: "${{ steps.build.outputs.path }}"}
          both: {value: "${{ steps.build.outputs.path }}+${{ steps.build.outcome }}"}
          missing: {value: "${{ steps.nope.outputs.x }}"}
        runs:
          using: composite
          steps:
            - id: build
              shell: bash
              run: echo "path=/nix/store/abc" >> "$GITHUB_OUTPUT"
        """,
    )
    assert result.outputs == {
        "path": "/nix/store/abc",
        "both": "/nix/store/abc+success",
        "missing": "",
    }


STATUS_ACTION = """
    outputs:
      failed-outcome: {value: "${{ steps.fails.outcome }}/${{ steps.fails.conclusion }}"}
    runs:
      using: composite
      steps:
        - id: fails
          shell: bash
          continue-on-error: ${{ inputs.tolerate == 'yes' }}
          run: echo "partial=1" >> "$GITHUB_OUTPUT"; exit 7
        - id: plain
          shell: bash
          run: echo plain
        - id: on-failure
          if: failure()
          shell: bash
          run: echo on-failure
        - id: always
          if: ${{ always() }}
          shell: bash
          run: echo "always saw ${{ steps.fails.outputs.partial }}"
        - id: after-outcome
          if: steps.fails.outcome == 'failure'
          shell: bash
          run: echo after-outcome
    inputs:
      tolerate: {default: "no"}
    """


def outcomes(result: ActionResult) -> dict[str, str]:
    return {step.label: step.outcome for step in result.steps}


def test_a_failing_step_skips_later_steps_unless_they_ask(tmp_path: Path) -> None:
    result = run_toy(tmp_path, STATUS_ACTION)
    assert result.outcome == "failure"
    assert result.exit_code == 7
    assert outcomes(result) == {
        "fails": "failure",
        "plain": "skipped",
        "on-failure": "success",
        "always": "success",
        "after-outcome": "skipped",
    }
    assert out(result, "always") == "always saw 1"
    assert result.outputs == {"failed-outcome": "failure/failure"}
    assert [a.message for a in result.annotations_of("error")] == [
        "Process completed with exit code 7."
    ]


def test_continue_on_error_keeps_the_action_green(tmp_path: Path) -> None:
    result = run_toy(tmp_path, STATUS_ACTION, inputs={"tolerate": "yes"})
    assert result.outcome == "success"
    assert result.exit_code == 0
    assert outcomes(result) == {
        "fails": "failure",
        "plain": "success",
        "on-failure": "skipped",
        "always": "success",
        "after-outcome": "success",
    }
    assert result.step("fails").conclusion == "success"
    assert result.outputs == {"failed-outcome": "failure/success"}


def test_remote_uses_step_is_fine_when_skipped(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: probe
              shell: bash
              run: echo "found=true" >> "$GITHUB_OUTPUT"
            - id: setup
              if: steps.probe.outputs.found != 'true'
              uses: actions/setup-python@0000000000000000000000000000000000000000
              with: {python-version: "3.12"}
        """,
    )
    result.assert_success()
    assert outcomes(result) == {"probe": "success", "setup": "skipped"}


def test_remote_uses_step_that_would_run_is_a_harness_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="harness cannot run uses: actions/setup-python@v5"):
        run_toy(
            tmp_path,
            """
            runs:
              using: composite
              steps:
                - uses: actions/setup-python@v5
            """,
        )


@pytest.mark.parametrize(
    ("action_yaml", "fragment"),
    [
        pytest.param(
            "runs: {using: node20, main: x.js}",
            "runs.using must be 'composite'",
            id="not-composite",
        ),
        pytest.param(
            "runs: {using: composite, steps: [{run: echo}]}",
            "requires shell:",
            id="run-without-shell",
        ),
        pytest.param(
            "runs: {using: composite, steps: [{shell: bash}]}",
            "exactly one of",
            id="neither-run-nor-uses",
        ),
        pytest.param(
            "runs: {using: composite, steps: [{run: x, shell: bash, timeout: 1}]}",
            "unexpected key(s) ['timeout']",
            id="unknown-step-key",
        ),
        pytest.param(
            "runs: {using: composite, steps: [{id: a, run: x, shell: bash},"
            " {id: A, run: y, shell: bash}]}",
            "duplicate step id",
            id="duplicate-ids",
        ),
        pytest.param(
            "runs: {using: composite, steps: [{id: 1a, run: x, shell: bash}]}",
            "must start with a letter",
            id="bad-id",
        ),
        pytest.param("runs: [", "not valid YAML", id="bad-yaml"),
    ],
)
def test_malformed_actions_are_rejected_before_running(
    tmp_path: Path, action_yaml: str, fragment: str
) -> None:
    with pytest.raises(ActionDefinitionError, match=re.escape(fragment)):
        run_toy(tmp_path, action_yaml)


def test_shells_working_directory_and_script_location(tmp_path: Path) -> None:
    (tmp_path / "workspace" / "sub").mkdir(parents=True)
    result = run_toy(
        tmp_path,
        f"""
        inputs:
          dir: {{default: sub}}
        runs:
          using: composite
          steps:
            - id: bash
              shell: bash
              working-directory: ${{{{ inputs.dir }}}}
              run: |
                echo "cwd=$PWD script=$0"
                echo "$-" | grep -q e && echo errexit
                set -o | grep pipefail
            - id: sh
              shell: sh
              run: echo "sh ok"
            - id: python
              shell: python
              run: |
                import os, sys
                print("py", sys.argv[0].endswith(".py"), os.getcwd())
            - id: custom
              shell: {sys.executable} -u {{0}}
              run: print("custom")
        """,
        host_env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    result.assert_success()
    workspace = tmp_path / "workspace"
    first = out(result, "bash").splitlines()
    assert first[0].startswith(f"cwd={workspace / 'sub'} script={result.runner_temp}/")
    assert first[1] == "errexit"
    assert re.fullmatch(r"pipefail\s+on", first[2])
    assert result.step("bash").argv[1:5] == ("--noprofile", "--norc", "-eo", "pipefail")
    assert out(result, "sh") == "sh ok"
    assert out(result, "python") == f"py True {workspace}"
    assert out(result, "custom") == "custom"


def test_missing_working_directory_fails_the_step(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              working-directory: nowhere
              run: echo never
        """,
    )
    assert result.outcome == "failure"
    step = result.step("s")
    assert step.exit_code is None
    assert step.error is not None
    assert "does not exist" in step.error


def test_pipefail_and_errexit_stop_the_script(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: |
                false | cat
                echo unreachable
        """,
    )
    assert result.step("s").exit_code == 1
    assert "unreachable" not in result.raw_output


def test_runner_variables_and_github_context(tmp_path: Path) -> None:
    payload = {"pull_request": {"base": {"ref": "main"}, "head": {"ref": "feature/x"}}}
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: vars
              shell: bash
              env:
                CTX_REPO: ${{ github.repository }}
                CTX_HEAD: ${{ github.event.pull_request.head.ref }}
                CTX_ACTION_PATH: ${{ github.action_path }}
                CTX_TEMP: ${{ runner.temp }}
              run: env | sort
        """,
        event_name="pull_request",
        event_payload=payload,
        ref="refs/pull/7/merge",
        github={"repository": "acme/widgets", "sha": "f" * 40, "ref_protected": "true"},
    )
    result.assert_success()
    env = dict(line.split("=", 1) for line in out(result, "vars").splitlines() if "=" in line)
    workspace, temp = tmp_path / "workspace", result.runner_temp
    expected = {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_REF": "refs/pull/7/merge",
        "GITHUB_REF_NAME": "7/merge",
        "GITHUB_REF_TYPE": "branch",
        "GITHUB_REF_PROTECTED": "true",
        "GITHUB_BASE_REF": "main",
        "GITHUB_HEAD_REF": "feature/x",
        "GITHUB_REPOSITORY": "acme/widgets",
        "GITHUB_REPOSITORY_OWNER": "acme",
        "GITHUB_SHA": "f" * 40,
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_ACTION_PATH": str(tmp_path / "action"),
        "GITHUB_ACTION": "vars",
        "GITHUB_API_URL": "https://api.github.com",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "1",
        "GITHUB_JOB": "test",
        "RUNNER_OS": "Linux",
        "RUNNER_ENVIRONMENT": "github-hosted",
        "RUNNER_TEMP": str(temp),
        "RUNNER_TOOL_CACHE": str(tmp_path / "tool-cache"),
        "CTX_REPO": "acme/widgets",
        "CTX_HEAD": "feature/x",
        "CTX_ACTION_PATH": str(tmp_path / "action"),
        "CTX_TEMP": str(temp),
    }
    assert {k: env.get(k) for k in expected} == expected
    assert env["RUNNER_ARCH"] in ("X64", "ARM64")
    assert json.loads(Path(env["GITHUB_EVENT_PATH"]).read_text()) == payload
    assert "GITHUB_TOKEN" not in env


@pytest.mark.parametrize(
    ("ref", "event_payload", "expected"),
    [
        pytest.param("refs/tags/v1.2", {}, "tag v1.2 event={}", id="tag-ref"),
        pytest.param("refs/heads/feat/x", {}, "branch feat/x event={}", id="branch-with-slash"),
        pytest.param(None, None, "unset unset event=unset", id="no-ref-no-payload"),
        pytest.param(
            "refs/heads/main",
            b"{not-json",
            "branch main event={not-json",
            id="malformed-payload-bytes",
        ),
    ],
)
def test_refs_and_event_files(
    tmp_path: Path, ref: str | None, event_payload: object, expected: str
) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: |
                event=$(cat "${GITHUB_EVENT_PATH:-/nonexistent}" 2>/dev/null || echo unset)
                type=${GITHUB_REF_TYPE:-unset} name=${GITHUB_REF_NAME:-unset}
                echo "$type $name event=${event//[$' \\n']/}"
        """,
        ref=ref,
        event_payload=event_payload,
    )
    result.assert_success()
    assert out(result, "s") == expected


def test_host_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_TEST_LEAK", "leaked")
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: echo "leak=[${HARNESS_TEST_LEAK:-}] extra=[$EXTRA] lang=[$LANG]"
        """,
        host_env={"EXTRA": "given"},
    )
    result.assert_success()
    assert out(result, "s") == "leak=[] extra=[given] lang=[C.UTF-8]"


MASKING = """
    inputs:
      token: {required: true}
    runs:
      using: composite
      steps:
        - id: s
          shell: bash
          env: {TOKEN: "${{ inputs.token }}", GH: "${{ github.token }}"}
          run: |
            echo "before: $TOKEN"
            echo "::add-mask ::$TOKEN"
            echo "after: $TOKEN"
            echo "gh: $GH"
            echo "from stderr: $TOKEN" >&2
            echo "::add-mask::   "
            echo "::add-mask::line1%0Aline2"
            printf 'line1\\nline2\\n'
    """


def test_masks_apply_to_later_lines_and_the_raw_log_keeps_everything(tmp_path: Path) -> None:
    result = run_toy(tmp_path, MASKING, inputs={"token": "s3cr3t-value"})
    result.assert_success()
    assert result.output.splitlines() == [
        "before: s3cr3t-value",
        "::add-mask ::***",
        "after: ***",
        "gh: ***",
        "from stderr: ***",
        "::add-mask::   ",
        "::add-mask::line1%0Aline2",
        "line1",
        "line2",
    ]
    assert "after: s3cr3t-value" in result.raw_output
    assert "s3cr3t-value" in result.masks
    assert "line1\nline2" in result.masks
    assert result.leaks("s3cr3t-value") == [
        "log: before: s3cr3t-value",
        "log: after: s3cr3t-value",
        "log: from stderr: s3cr3t-value",
    ]
    assert [a.message for a in result.annotations_of("warning")] == [
        "Can't add secret mask for empty string in ##[add-mask] command."
    ]


def test_secrets_are_masked_from_the_start_and_leaks_finds_files(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              env: {T: "${{ inputs.t }}"}
              run: |
                echo "t=$T"
                echo "leak=$T" >> "$GITHUB_ENV"
        inputs:
          t: {}
        """,
        inputs={"t": "preset-secret"},
        secrets=["preset-secret"],
    )
    assert result.output == "t=***"
    assert result.leaks("preset-secret") == ["log: t=preset-secret", "env file of step s"]
    assert result.leaks("never-printed") == []


def test_annotations_groups_debug_and_stop_commands(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: |
                echo "::group::Build"
                echo "::error file=src/a.py,line=3,endLine=4,col=2,title=Bad%2C bad::oops%0Amore"
                echo "::warning::careful"
                echo "::notice title=FYI::note"
                echo "::endgroup::"
                echo "::debug::dbg"
                echo "::stop-commands::pause123"
                echo "::error::not a command now"
                echo "::pause123::"
                echo "::error::a command again"
        """,
    )
    assert result.outcome == "success"
    step = result.step("s")
    assert step.groups == ("Build",)
    assert step.debug == ("dbg",)
    kinds = [
        (a.kind, a.message, a.title, a.file, a.line, a.end_line, a.col, a.step)
        for a in result.annotations
    ]
    assert kinds == [
        ("error", "oops\nmore", "Bad, bad", "src/a.py", 3, 4, 2, "s"),
        ("warning", "careful", None, None, None, None, None, "s"),
        ("notice", "note", "FYI", None, None, None, None, "s"),
        ("error", "a command again", None, None, None, None, None, "s"),
    ]
    assert result.over_annotation_budget() == []


def test_annotation_budget_breaches_are_reported(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: for i in $(seq 11); do echo "::warning::w$i"; done
        """,
    )
    assert result.over_annotation_budget() == ["step s: 11 warning annotations (limit 10)"]


@pytest.mark.parametrize(
    "command",
    ["set-output name=x", "set-env name=X", "add-path", "save-state name=x"],
)
def test_deprecated_stdout_commands_are_flagged_and_not_applied(
    tmp_path: Path, command: str
) -> None:
    result = run_toy(
        tmp_path,
        f"""
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: echo "::{command}::/v"
        """,
    )
    name = command.split(maxsplit=1)[0]
    assert len(result.problems) == 1
    assert f"::{name}::" in result.problems[0]
    assert result.step("s").outputs == {}
    assert result.step("s").env_added == {}
    assert result.annotations_of("error")[0].source == "runner"


def test_a_file_command_grammar_error_fails_the_step(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: printf 'body<<EOF\\ntext' >> "$GITHUB_OUTPUT"
        """,
    )
    assert result.outcome == "failure"
    step = result.step("s")
    assert step.exit_code == 0
    assert step.error is not None
    assert "matching delimiter not found 'EOF'" in step.error
    assert step.files.output == "body<<EOF\ntext"


def test_hashfiles_and_expression_errors_inside_steps(tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "flake.lock").write_text("{}")
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: hash
              shell: bash
              env: {H: "${{ hashFiles('**/flake.lock') }}"}
              run: echo "$H"
            - id: broken
              shell: bash
              env: {X: "${{ secrets.NOPE }}"}
              run: echo never
        """,
    )
    assert len(out(result, "hash")) == 64
    broken = result.step("broken")
    assert broken.outcome == "failure"
    assert broken.error is not None
    assert "Unrecognized named-value: 'secrets'" in broken.error


# ---------------------------------------------------------------- processes


CANCEL_ACTION = """
    runs:
      using: composite
      steps:
        - id: work
          shell: bash
          run: |
            trap 'echo "got INT"; exit 3' INT
            echo ready
            while true; do sleep 0.05; done
        - id: plain
          shell: bash
          run: echo plain
        - id: cleanup
          if: always()
          shell: bash
          run: echo "cleanup status=${{ job.status }}"
        - id: on-cancel
          if: cancelled()
          shell: bash
          run: echo on-cancel
    """


def test_cancellation_sends_sigint_and_runs_only_always_steps(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path, CANCEL_ACTION, cancel=Cancel(when_output=lambda line: line == "ready")
    )
    assert result.outcome == "cancelled"
    assert result.cancelled
    work = result.step("work")
    assert work.signals_sent == ("SIGINT",)
    assert work.exit_code == 3
    assert "got INT" in work.output
    assert outcomes(result) == {
        "work": "cancelled",
        "plain": "skipped",
        "cleanup": "success",
        "on-cancel": "success",
    }
    assert out(result, "cleanup") == "cleanup status=cancelled"


@pytest.mark.parametrize(
    ("traps", "signals"),
    [
        pytest.param(
            "trap '' INT; trap 'echo term; exit 4' TERM",
            ("SIGINT", "SIGTERM"),
            id="sigterm-after-ignored-sigint",
        ),
        pytest.param(
            "trap '' INT TERM", ("SIGINT", "SIGTERM", "SIGKILL"), id="sigkill-when-both-ignored"
        ),
    ],
)
def test_cancellation_escalates(tmp_path: Path, traps: str, signals: tuple[str, ...]) -> None:
    result = run_toy(
        tmp_path,
        f"""
        runs:
          using: composite
          steps:
            - id: stubborn
              shell: bash
              run: |
                {traps}
                echo ready
                while true; do sleep 0.05; done
        """,
        cancel=Cancel(
            step="stubborn",
            when_output=lambda line: line == "ready",
            sigterm_after_s=0.3,
            sigkill_after_s=0.3,
        ),
    )
    assert result.step("stubborn").signals_sent == signals
    assert result.outcome == "cancelled"


SIGNAL_REPORTER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *a: (print('python got SIGINT', flush=True),"
    " sys.exit(5)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


@pytest.mark.parametrize(
    ("launch", "target", "python_saw_it"),
    [
        pytest.param("exec python3 reporter.py", "leader", True, id="exec-gets-leader-signal"),
        pytest.param("python3 reporter.py", "group", True, id="child-gets-group-signal"),
        pytest.param("python3 reporter.py", "leader", False, id="child-misses-leader-signal"),
    ],
)
def test_cancellation_target_decides_who_sees_sigint(
    tmp_path: Path, launch: str, target: str, python_saw_it: bool
) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "reporter.py").write_text(SIGNAL_REPORTER)
    result = run_toy(
        tmp_path,
        f"""
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: {launch}
        """,
        cancel=Cancel(
            when_output=lambda line: line == "ready",
            target=target,  # type: ignore[arg-type]
            sigterm_after_s=0.5,
            sigkill_after_s=0.5,
        ),
    )
    assert ("python got SIGINT" in result.raw_output) is python_saw_it
    assert result.outcome == "cancelled"


def test_cancellation_on_an_external_event(tmp_path: Path) -> None:
    event = threading.Event()
    timer = threading.Timer(0.2, event.set)
    timer.start()
    try:
        result = run_toy(tmp_path, CANCEL_ACTION, cancel=Cancel(step="work", when_set=event))
    finally:
        timer.cancel()
    assert result.step("work").signals_sent == ("SIGINT",)
    assert result.outcome == "cancelled"


def test_timeout_kills_the_process_group_and_stops_the_run(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: hang
              shell: bash
              run: sleep 30
            - id: later
              if: always()
              shell: bash
              run: echo later
        """,
        timeout=0.5,
    )
    assert result.timed_out
    assert result.outcome == "failure"
    hang = result.step("hang")
    assert hang.timed_out
    assert hang.signals_sent == ("SIGKILL",)
    assert hang.exit_code == 137
    assert [s.label for s in result.steps] == ["hang"]


def test_leftover_background_processes_are_reported_and_killed(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: s
              shell: bash
              run: |
                sleep 31 > /dev/null 2>&1 &
                echo started
        """,
    )
    step = result.step("s")
    assert step.outcome == "success"
    assert len(step.leftover_processes) == 1
    assert "sleep 31" in step.leftover_processes[0]
    pid = int(step.leftover_processes[0].split()[0])
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")


# ---------------------------------------------------------------- GitHub's ID-token endpoint

ID_TOKEN_STEP = """
runs:
  using: composite
  steps:
    - id: ask
      shell: bash
      run: |
        python3 - <<'PY'
        import json, os, urllib.error, urllib.request
        url = os.environ["ACTIONS_ID_TOKEN_REQUEST_URL"] + "&audience=https%3A%2F%2Fx.example"
        for bearer in (os.environ["ACTIONS_ID_TOKEN_REQUEST_TOKEN"], "wrong"):
            request = urllib.request.Request(url, headers={"Authorization": "Bearer " + bearer})
            try:
                with urllib.request.urlopen(request) as answer:
                    print("value", json.load(answer)["value"])
            except urllib.error.HTTPError as error:
                print("status", error.code)
        print("token", os.environ["ACTIONS_ID_TOKEN_REQUEST_TOKEN"])
        PY
"""


def test_the_id_token_endpoint_answers_the_request_token_only_and_is_masked(
    tmp_path: Path,
) -> None:
    from tests.harness.oidc import IdTokenEndpoint  # noqa: PLC0415 - only this test

    with IdTokenEndpoint(lambda audience: f"jwt-for-{audience}") as endpoint:
        result = run_toy(tmp_path, ID_TOKEN_STEP, id_token=endpoint)
    assert result.outcome == "success", result.output
    lines = result.step("ask").output.splitlines()
    assert "value jwt-for-https://x.example" in lines
    assert "status 401" in lines
    assert "token ***" in lines  # the request token is masked, as a secret
    assert endpoint.audiences == ["https://x.example"]
    assert endpoint.refused == 1


def test_without_the_endpoint_no_step_gets_the_variables(tmp_path: Path) -> None:
    result = run_toy(
        tmp_path,
        """
        runs:
          using: composite
          steps:
            - id: env
              shell: bash
              run: echo "url=${ACTIONS_ID_TOKEN_REQUEST_URL:-none}"
        """,
    )
    assert "url=none" in out(result, "env")
