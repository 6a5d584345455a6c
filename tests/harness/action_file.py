"""Loading a composite ``action.yml``: YAML with string scalars, structural checks the runner
makes before any step runs, and the harness's own exceptions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

STEP_KEYS = frozenset(
    {"id", "if", "name", "run", "shell", "env", "working-directory", "uses", "with"}
    | {"continue-on-error"}
)
STEP_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class HarnessError(Exception):
    """The harness cannot run this action as asked (not a failure of the action itself)."""


class ActionDefinitionError(HarnessError):
    """action.yml is malformed in a way the GitHub runner would reject before any step runs."""


class StringLoader(yaml.SafeLoader):
    """YAML with every plain scalar kept as the string written: GitHub's inputs and env values
    are strings, and YAML 1.1's ``yes``/``on``/``010`` conversions do not apply."""


StringLoader.yaml_implicit_resolvers = {}


def load_action(action_dir: Path) -> dict[str, Any]:
    """Read and structurally validate ``action.yml`` (or ``action.yaml``) in ``action_dir``."""
    for name in ("action.yml", "action.yaml"):
        path = action_dir / name
        if path.is_file():
            break
    else:
        raise ActionDefinitionError(
            f"No action.yml or action.yaml in {action_dir}: pass the action's directory."
        )
    try:
        data = yaml.load(path.read_text(), Loader=StringLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ActionDefinitionError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ActionDefinitionError(f"{path} must be a mapping with name, inputs and runs.")
    runs = data.get("runs")
    if not isinstance(runs, dict) or runs.get("using") != "composite":
        raise ActionDefinitionError(
            f"{path}: runs.using must be 'composite'; the harness runs composite actions only."
        )
    steps = runs.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ActionDefinitionError(f"{path}: runs.steps must be a non-empty list of steps.")
    seen: set[str] = set()
    for index, step in enumerate(steps):
        where = f"{path}: runs.steps[{index}]"
        if not isinstance(step, dict):
            raise ActionDefinitionError(f"{where} must be a mapping.")
        unknown = sorted(set(step) - STEP_KEYS)
        if unknown:
            raise ActionDefinitionError(
                f"{where} has unexpected key(s) {unknown}; composite steps allow "
                f"{sorted(STEP_KEYS)}."
            )
        if ("run" in step) == ("uses" in step):
            raise ActionDefinitionError(f"{where} needs exactly one of run: or uses:.")
        if "run" in step and not step.get("shell"):
            raise ActionDefinitionError(
                f"{where}: a composite run: step requires shell: (e.g. shell: bash)."
            )
        step_id = step.get("id")
        if step_id is not None:
            if not isinstance(step_id, str) or not re.fullmatch(
                r"[A-Za-z_][A-Za-z0-9_\-]*", step_id
            ):
                raise ActionDefinitionError(
                    f"{where}: id {step_id!r} must start with a letter or _ and contain only "
                    "letters, digits, - and _."
                )
            if step_id.casefold() in seen:
                raise ActionDefinitionError(f"{where}: duplicate step id {step_id!r}.")
            seen.add(step_id.casefold())
        for mapping_key in ("env", "with"):
            if mapping_key in step and not isinstance(step[mapping_key], dict):
                raise ActionDefinitionError(f"{where}: {mapping_key}: must be a mapping.")
    for section in ("inputs", "outputs"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ActionDefinitionError(f"{path}: {section}: must be a mapping.")
    return data
