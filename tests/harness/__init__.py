"""A test harness that runs a composite ``action.yml`` the way the GitHub runner does.

``run_action`` is the entry point; ``expressions`` evaluates ``${{ }}``; ``commands`` parses
file commands and workflow commands; ``process`` runs one step's process group.
"""

from tests.harness.action_file import ActionDefinitionError, HarnessError
from tests.harness.contexts import FAKE_GITHUB_TOKEN
from tests.harness.process import Cancel
from tests.harness.results import ActionResult, Annotation, CommandFiles, StepResult
from tests.harness.runner import run_action

__all__ = [
    "FAKE_GITHUB_TOKEN",
    "ActionDefinitionError",
    "ActionResult",
    "Annotation",
    "Cancel",
    "CommandFiles",
    "HarnessError",
    "StepResult",
    "run_action",
]
