"""Cross-check the harness against nektos/act where an ``act`` binary (and its Docker) exists.

act cannot be installed from the registries reachable here (github-actions-facts.md §7), so
this module skips unless ``act`` is on PATH. act sets ``INPUT_*`` for composite steps
(nektos/act#2874), so the harness is compared in ``imitate_act`` mode.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.harness import run_action

ACT = shutil.which("act")
pytestmark = pytest.mark.skipif(
    ACT is None, reason="nektos/act is not on PATH (not installable from the reachable registries)"
)

TOY_ACTION = """
name: toy
inputs:
  who: {required: true}
outputs:
  greeting: {value: "${{ steps.hello.outputs.greeting }}"}
runs:
  using: composite
  steps:
    - id: hello
      shell: bash
      env: {WHO: "${{ inputs.who }}"}
      run: |
        echo "greeting=hi $WHO" >> "$GITHUB_OUTPUT"
        echo "FROM_ENV_FILE=yes" >> "$GITHUB_ENV"
    - id: later
      shell: bash
      run: echo "later-step env=$FROM_ENV_FILE input-vars=$(env | grep -c '^INPUT_' || true)"
"""

WORKFLOW = """
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - id: toy
        uses: ./toy
        with: {who: world}
      - run: echo "action-output=${{ steps.toy.outputs.greeting }}"
"""


def test_act_and_the_harness_agree_on_a_toy_action(tmp_path: Path) -> None:
    assert ACT is not None
    repo = tmp_path / "repo"
    (repo / "toy").mkdir(parents=True)
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / "toy" / "action.yml").write_text(textwrap.dedent(TOY_ACTION))
    (repo / ".github" / "workflows" / "toy.yml").write_text(textwrap.dedent(WORKFLOW))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)

    act = subprocess.run(
        [ACT, "push", "--job", "test", "--bind"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert act.returncode == 0, act.stdout[-4000:] + act.stderr[-4000:]
    act_log = act.stdout + act.stderr

    harness = run_action(
        repo / "toy",
        inputs={"who": "world"},
        env={},
        event_name="push",
        event_payload={"repository": {"default_branch": "main"}},
        ref="refs/heads/main",
        workspace=repo,
        imitate_act=True,
    )
    harness.assert_success()
    assert harness.outputs == {"greeting": "hi world"}
    assert "action-output=hi world" in act_log
    later = harness.step("later").output
    assert later in act_log, f"harness printed {later!r}; act did not"
