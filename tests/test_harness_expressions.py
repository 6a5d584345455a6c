"""The harness's ``${{ }}`` evaluator: literals, loose equality, operators, functions, templates."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import pytest

from tests.harness.expressions import (
    EvalContext,
    ExpressionError,
    JobStatus,
    calls_status_function,
    condition_expression,
    evaluate,
    evaluate_condition,
    interpolate,
)
from tests.harness.hashfiles import hash_files
from tests.harness.values import loose_equal, to_string, truthy

PAYLOAD: dict[str, Any] = {
    "repository": {"default_branch": "main", "fork": False},
    "commits": [{"id": "c1", "message": "one"}, {"id": "c2", "message": "two"}],
    "labels": [{"name": "bug"}, {"name": "ci"}],
    "number": 42,
}


def ctx(status: JobStatus = "success", workspace: Path | None = None) -> EvalContext:
    return EvalContext(
        contexts={
            "github": {"event_name": "push", "event": PAYLOAD, "ref": "refs/heads/main"},
            "inputs": {"cache-name": "ci", "push-cache": "true", "empty": ""},
            "env": {"FOO": "bar"},
            "steps": {"build": {"outputs": {"path": "/nix/store/x"}, "outcome": "success"}},
            "runner": {"os": "Linux"},
            "job": {"status": status},
        },
        status=status,
        workspace=workspace,
    )


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("1", 1, id="integer-literal"),
        pytest.param("-2.5", -2.5, id="negative-float-literal"),
        pytest.param("1.5e2", 150, id="exponent-literal"),
        pytest.param("0xff", 255, id="hex-literal"),
        pytest.param("'it''s'", "it's", id="string-with-escaped-quote"),
        pytest.param("''", "", id="empty-string"),
        pytest.param("true", True, id="true"),
        pytest.param("false", False, id="false"),
        pytest.param("null", None, id="null"),
        pytest.param("(((true)))", True, id="parentheses"),
    ],
)
def test_literals_keep_their_type(expression: str, expected: object) -> None:
    value = evaluate(expression, ctx())
    assert value == expected
    assert type(value) is type(expected) or (isinstance(expected, int) and float(value) == expected)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("1 == '1'", True, id="number-equals-numeric-string"),
        pytest.param("'' == 0", True, id="empty-string-is-zero"),
        pytest.param("null == 0", True, id="null-is-zero"),
        pytest.param("null == ''", True, id="null-equals-empty-string"),
        pytest.param("null == false", True, id="null-equals-false"),
        pytest.param("null == null", True, id="null-equals-null"),
        pytest.param("true == 1", True, id="true-is-one"),
        pytest.param("true == '1'", True, id="true-equals-string-one"),
        pytest.param("true == 'true'", False, id="true-is-not-the-string-true"),
        pytest.param("false == '0'", True, id="false-equals-string-zero"),
        pytest.param("'abc' == 'ABC'", True, id="strings-compare-case-insensitively"),
        pytest.param("'abc' != 'ABD'", True, id="not-equal-strings"),
        pytest.param("'abc' == 0", False, id="non-numeric-string-is-nan"),
        pytest.param("NaN == NaN", False, id="nan-never-equals-nan"),
        pytest.param("'0x10' == 16", True, id="hex-string-coerces"),
        pytest.param("' 3 ' == 3", True, id="padded-numeric-string-coerces"),
        pytest.param("'1e3' == 1000", True, id="exponent-string-coerces"),
        pytest.param("fromJSON('[]') == fromJSON('[]')", False, id="arrays-equal-only-by-identity"),
        pytest.param("github.event == github.event", True, id="same-object-instance-is-equal"),
        pytest.param("fromJSON('{}') == 'Object'", False, id="object-never-equals-string"),
        pytest.param("'b' > 'A'", True, id="string-order-ignores-case"),
        pytest.param("1 < '2'", True, id="number-less-than-numeric-string"),
        pytest.param("'a' < 1", False, id="nan-comparisons-are-false"),
        pytest.param("'a' >= 1", False, id="nan-comparisons-are-false-both-ways"),
        pytest.param("null < 1", True, id="null-orders-as-zero"),
        pytest.param("true > false", True, id="booleans-order"),
        pytest.param("2 <= 2", True, id="less-or-equal"),
        pytest.param("!''", True, id="not-empty-string"),
        pytest.param("!'0'", False, id="string-zero-is-truthy"),
        pytest.param("!0", True, id="not-zero"),
        pytest.param("!fromJSON('[]')", False, id="empty-array-is-truthy"),
        pytest.param("!1 == false", True, id="not-binds-tighter-than-equality"),
        pytest.param("'' || 'default'", "default", id="or-returns-right-operand"),
        pytest.param("'a' || 'b'", "a", id="or-returns-truthy-left"),
        pytest.param("'a' && 'b'", "b", id="and-returns-right-operand"),
        pytest.param("0 && 'x'", 0, id="and-returns-falsy-left"),
        pytest.param("null || false", False, id="or-of-falsy-values"),
        pytest.param("true || 1 == 2 && false", True, id="and-binds-tighter-than-or"),
        pytest.param("1 < 2 == true", True, id="comparison-binds-tighter-than-equality"),
    ],
)
def test_operators_follow_github_loose_semantics(expression: str, expected: object) -> None:
    assert evaluate(expression, ctx()) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("github.event.repository.default_branch", "main", id="nested-property"),
        pytest.param("github['event_name']", "push", id="index-with-string"),
        pytest.param("github.EVENT_NAME", "push", id="property-names-ignore-case"),
        pytest.param("GITHUB.event_name", "push", id="context-names-ignore-case"),
        pytest.param("github.event.commits[1].id", "c2", id="array-index"),
        pytest.param("github.event.commits[5]", None, id="index-out-of-range-is-null"),
        pytest.param("github.event.commits[0.5]", None, id="fractional-index-is-null"),
        pytest.param("github.event.commits.*.id", ["c1", "c2"], id="object-filter"),
        pytest.param("github.event.labels[*].name", ["bug", "ci"], id="bracket-object-filter"),
        pytest.param("steps.build.outputs.path", "/nix/store/x", id="steps-output"),
        pytest.param("steps.missing.outputs.path", None, id="missing-step-is-null"),
        pytest.param("inputs.cache-name", "ci", id="hyphenated-name"),
        pytest.param("github.event.number", 42, id="payload-number"),
        pytest.param("env.FOO.length", None, id="property-of-string-is-null"),
        pytest.param("contains('Hello', 'ELL')", True, id="contains-string-ignores-case"),
        pytest.param("contains(fromJSON('[\"a\",\"b\"]'), 'B')", True, id="contains-array-item"),
        pytest.param("contains(fromJSON('[1,2]'), '2')", True, id="contains-array-loose-equality"),
        pytest.param("contains(github.event.labels.*.name, 'bug')", True, id="contains-filter"),
        pytest.param("contains('abc', 'x')", False, id="contains-missing"),
        pytest.param("startsWith('refs/heads/main', 'REFS/')", True, id="startswith"),
        pytest.param("endsWith(github.ref, '/MAIN')", True, id="endswith"),
        pytest.param("format('{0}-{1} {{x}}', 'a', 1)", "a-1 {x}", id="format"),
        pytest.param("format('{1}{0}', true, null)", "true", id="format-stringifies"),
        pytest.param("join(fromJSON('[\"a\",\"b\"]'), '+')", "a+b", id="join-with-separator"),
        pytest.param("join(github.event.commits.*.id)", "c1,c2", id="join-default-comma"),
        pytest.param("join('x')", "x", id="join-of-a-string"),
        pytest.param(
            "toJSON(fromJSON('{\"a\":[1,true,null]}'))",
            '{\n  "a": [\n    1,\n    true,\n    null\n  ]\n}',
            id="tojson-pretty",
        ),
        pytest.param("fromJSON('1.5')", 1.5, id="fromjson-number"),
        pytest.param('fromJson(\'{"k":"v"}\').k', "v", id="function-names-ignore-case"),
        pytest.param("toJSON(github.event.repository.fork)", "false", id="tojson-bool"),
    ],
)
def test_property_access_and_functions(expression: str, expected: object) -> None:
    assert evaluate(expression, ctx()) == expected


@pytest.mark.parametrize(
    ("status", "expression", "expected"),
    [
        pytest.param("success", "success()", True, id="success-when-green"),
        pytest.param("failure", "success()", False, id="success-after-a-failure"),
        pytest.param("failure", "failure()", True, id="failure-after-a-failure"),
        pytest.param("cancelled", "cancelled()", True, id="cancelled-when-cancelled"),
        pytest.param("cancelled", "failure()", False, id="failure-is-not-cancelled"),
        pytest.param("cancelled", "always()", True, id="always-even-when-cancelled"),
        pytest.param("success", "job.status", "success", id="job-status-context"),
    ],
)
def test_status_functions_read_the_job_status(
    status: JobStatus, expression: str, expected: object
) -> None:
    assert evaluate(expression, ctx(status)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, "", id="null"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(1.0, "1", id="integral-float"),
        pytest.param(0.1, "0.1", id="fraction"),
        pytest.param(-3, "-3", id="negative-int"),
        pytest.param(math.nan, "NaN", id="nan"),
        pytest.param(math.inf, "Infinity", id="infinity"),
        pytest.param([1], "Array", id="array"),
        pytest.param({"a": 1}, "Object", id="object"),
    ],
)
def test_values_stringify_like_the_runner(value: object, expected: str) -> None:
    assert to_string(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", False, id="empty-string"),
        pytest.param("false", True, id="string-false-is-truthy"),
        pytest.param(0, False, id="zero"),
        pytest.param(-0.0, False, id="negative-zero"),
        pytest.param(math.nan, False, id="nan"),
        pytest.param(None, False, id="null"),
        pytest.param([], True, id="empty-array"),
        pytest.param({}, True, id="empty-object"),
    ],
)
def test_truthiness(value: object, expected: bool) -> None:
    assert truthy(value) is expected


def test_loose_equality_is_symmetric_for_mixed_kinds() -> None:
    samples: list[object] = [None, True, False, 0, 1, "", "0", "1", "a", "A", 2.5, "2.5"]
    for left in samples:
        for right in samples:
            assert loose_equal(left, right) == loose_equal(right, left), (left, right)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("${{ 1 }}", 1, id="whole-expression-keeps-number"),
        pytest.param("${{ true }}", True, id="whole-expression-keeps-bool"),
        pytest.param("${{ fromJSON('[1]') }}", [1], id="whole-expression-keeps-array"),
        pytest.param("n=${{ 1 }}", "n=1", id="mixed-text-is-a-string"),
        pytest.param("a ${{ null }} b", "a  b", id="null-interpolates-empty"),
        pytest.param("${{ true }}${{ false }}", "truefalse", id="two-expressions"),
        pytest.param("${{ '}}' }}", "}}", id="braces-inside-a-string"),
        pytest.param("plain", "plain", id="no-expression"),
        pytest.param("x ${{ env.FOO }}", "x bar", id="env-context"),
    ],
)
def test_templates_interpolate(template: str, expected: object) -> None:
    assert interpolate(template, ctx()) == expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        pytest.param("", "success()", id="empty-is-success"),
        pytest.param(
            "inputs.push-cache == 'true'",
            "success() && (inputs.push-cache == 'true')",
            id="implicit-success",
        ),
        pytest.param(
            "${{ github.ref == 'x' }}", "success() && (github.ref == 'x')", id="wrapped-condition"
        ),
        pytest.param("${{ always() }}", "always()", id="status-function-no-wrap"),
        pytest.param(
            "failure() && steps.a.outcome",
            "failure() && steps.a.outcome",
            id="status-function-anywhere",
        ),
        pytest.param(
            "contains(format('{0}', cancelled()), 'x')",
            "contains(format('{0}', cancelled()), 'x')",
            id="nested-status-function",
        ),
    ],
)
def test_step_conditions_get_an_implicit_success(condition: str, expected: str) -> None:
    assert condition_expression(condition) == expected


@pytest.mark.parametrize(
    ("status", "condition", "expected"),
    [
        pytest.param("success", "true", True, id="true-when-green"),
        pytest.param("failure", "true", False, id="plain-true-skipped-after-failure"),
        pytest.param("failure", "failure()", True, id="failure-runs-after-failure"),
        pytest.param("failure", "always() && false", False, id="always-and-false"),
        pytest.param("cancelled", "${{ success() || cancelled() }}", True, id="cancelled-runs"),
        pytest.param("cancelled", "", False, id="default-skipped-on-cancel"),
        pytest.param("success", "inputs.empty", False, id="empty-input-is-falsy"),
    ],
)
def test_conditions_evaluate_with_job_status(
    status: JobStatus, condition: str, expected: bool
) -> None:
    assert evaluate_condition(condition, ctx(status)) is expected


def test_status_function_detection_ignores_context_names() -> None:
    assert not calls_status_function("steps.success.outputs.always == 'x'")
    assert calls_status_function("!cancelled()")


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        pytest.param("secrets.TOKEN", "Unrecognized named-value: 'secrets'", id="unknown-context"),
        pytest.param("nope()", "Unrecognized function: 'nope'", id="unknown-function"),
        pytest.param("contains('a')", "takes 2 argument(s), got 1", id="wrong-arity"),
        pytest.param("'abc", "Unterminated string", id="unterminated-string"),
        pytest.param("1 ==", "Unexpected 'end of expression'", id="dangling-operator"),
        pytest.param("1 2", "expected an operator", id="two-values"),
        pytest.param("a = b", "Unexpected symbol '='", id="assignment"),
        pytest.param("format('{2}', 1)", "format string", id="format-index-out-of-range"),
        pytest.param("format('}', 1)", "lone '}'", id="format-lone-brace"),
        pytest.param("fromJSON('{')", "fromJSON could not parse", id="bad-json"),
        pytest.param("", "Empty expression", id="empty"),
        pytest.param("1abc", "Unexpected symbol", id="number-glued-to-letters"),
    ],
)
def test_bad_expressions_raise_a_clear_error(expression: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(fragment)):
        evaluate(expression, ctx())


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("${{ 1 ", id="unclosed"),
        pytest.param("${{ github.ref }} && true", id="mixed-condition"),
    ],
)
def test_malformed_conditions_raise(template: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate_condition(template, ctx())


def _digest(*contents: bytes) -> str:
    total = hashlib.sha256()
    for content in contents:
        total.update(hashlib.sha256(content).digest())
    return total.hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "src" / "deep").mkdir(parents=True)
    (tmp_path / "a.lock").write_bytes(b"A")
    (tmp_path / "src" / "b.lock").write_bytes(b"B")
    (tmp_path / "src" / "deep" / "c.txt").write_bytes(b"C")
    (tmp_path / ".hidden.lock").write_bytes(b"H")
    return tmp_path


@pytest.mark.parametrize(
    ("patterns", "contents"),
    [
        pytest.param(["a.lock"], [b"A"], id="one-file"),
        pytest.param(["*.lock"], [b"H", b"A"], id="star-stays-in-directory-and-matches-dotfiles"),
        pytest.param(["**/*.lock"], [b"H", b"A", b"B"], id="globstar"),
        pytest.param(["**/*.lock", "!src/**"], [b"H", b"A"], id="negation"),
        pytest.param(["src"], [b"B", b"C"], id="directory-matches-its-files"),
        pytest.param(["a.lock", "src/deep/c.txt"], [b"A", b"C"], id="several-patterns"),
        pytest.param(["./src/b.lock"], [b"B"], id="dot-slash-prefix"),
        pytest.param(["src/?.lock"], [b"B"], id="question-mark"),
    ],
)
def test_hashfiles_hashes_the_digests_of_matched_files(
    files: Path, patterns: list[str], contents: list[bytes]
) -> None:
    assert hash_files(files, patterns) == _digest(*contents)


@pytest.mark.parametrize(
    "patterns",
    [
        pytest.param(["*.nothing"], id="no-match"),
        pytest.param(["../*"], id="outside-the-workspace"),
        pytest.param(["/etc/hostname"], id="absolute-outside-the-workspace"),
    ],
)
def test_hashfiles_is_empty_without_matches(files: Path, patterns: list[str]) -> None:
    assert hash_files(files, patterns) == ""


def test_hashfiles_from_an_expression_uses_the_workspace(files: Path) -> None:
    assert evaluate("hashFiles('a.lock')", ctx(workspace=files)) == _digest(b"A")
    with pytest.raises(ExpressionError, match="needs a workspace"):
        evaluate("hashFiles('a.lock')", ctx())
