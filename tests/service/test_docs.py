"""docs/watch-store.md and its examples stay true: every flag and every log event is
documented, the systemd unit's command line parses and its stop timeout covers the shutdown
deadline, the NixOS module is valid Nix."""

from __future__ import annotations

import ast
import configparser
import re
import shlex
from pathlib import Path

from nix_job.service.watch_store import parser
from tests.nixenv import NixEnv, require_nix

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "watch-store.md").read_text()
UNIT = ROOT / "docs" / "examples" / "nix-job-watch-store.service"
MODULE = ROOT / "docs" / "examples" / "nix-job-watch-store.nix"


def flags() -> set[str]:
    found: set[str] = set()
    for action in parser()._actions:
        found.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    return found


def events() -> set[str]:
    """Event names the service logs: the third argument of every ``event(...)`` call."""
    names: set[str] = set()
    for source in (ROOT / "nix_job" / "service").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "event"
                and len(node.args) >= 3
                and isinstance(node.args[2], ast.Constant)
            ):
                names.add(str(node.args[2].value))
    return names


def test_every_flag_is_in_the_reference_table() -> None:
    table = {m for m in re.findall(r"^\| `(--[a-z-]+)", DOC, re.MULTILINE)}
    assert table == flags()


def test_every_event_is_in_the_events_table() -> None:
    documented: set[str] = set()
    for cell in re.findall(r"^\| (`[a-z-]+`(?:, `[a-z-]+`)*) \|", DOC, re.MULTILINE):
        documented.update(re.findall(r"`([a-z-]+)`", cell))
    assert events() - documented == set()
    assert len(events()) >= 20


def test_the_unit_is_type_notify_and_its_command_line_parses() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "DynamicUser": "yes",
        "StateDirectory": "nix-job-watch-store",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "KillMode": "mixed",
        "Environment": service["Environment"],
    }
    assert {k: service[k] for k in expected} == expected
    assert service["LoadCredential"].startswith("attic-token:")
    argv = shlex.split(service["ExecStart"].replace("${CREDENTIALS_DIRECTORY}", "/run/c"))
    args = parser().parse_args(argv[argv.index("watch-store") + 1 :])
    assert args.token_file == "/run/c/attic-token"
    assert int(service["TimeoutStopSec"]) >= args.shutdown_timeout + 10
    assert int(service["WatchdogSec"]) > 0


def test_the_nixos_module_is_valid_nix(tmp_path: Path) -> None:
    require_nix()
    nix = NixEnv.create(tmp_path)
    nix.run(["nix-instantiate", "--parse", str(MODULE)])
    text = MODULE.read_text()
    for flag in re.findall(r'"(--[a-z-]+)"', text):
        assert flag in flags()
