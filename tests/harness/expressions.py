"""The ``${{ }}`` expression language of GitHub Actions: tokenise, parse, evaluate, interpolate.

Operators, functions, status functions and the implicit ``success() &&`` of step conditions;
value semantics (loose equality, truthiness, stringification) live in ``values``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.harness.hashfiles import hash_files
from tests.harness.values import (
    MISSING,
    compare,
    filter_values,
    get_index,
    get_property,
    lookup,
    loose_equal,
    to_json_text,
    to_number,
    to_string,
    truthy,
)

JobStatus = Literal["success", "failure", "cancelled"]
STATUS_FUNCTIONS = frozenset({"success", "failure", "always", "cancelled"})


class ExpressionError(Exception):
    """An expression could not be parsed or evaluated; the message names it and the position."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalContext:
    """What an expression can see: named contexts, the job status, the workspace for hashFiles.

    ``contexts`` maps a context name (``github``, ``inputs``, ``env``, ``runner``, ``steps``,
    ``job``, ...) to its data; names are matched case-insensitively, as on GitHub.
    """

    contexts: Mapping[str, Any] = field(default_factory=dict)
    status: JobStatus = "success"
    workspace: Path | None = None


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # 'num', 'str', 'ident', 'op', 'end'
    text: str
    value: Any
    pos: int


_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ".", ",", "*")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "'":
            j = i + 1
            parts: list[str] = []
            while True:
                if j >= len(text):
                    raise ExpressionError(
                        f"Unterminated string starting at position {i + 1} in expression "
                        f"{text!r}; close it with ' (write '' for a literal quote)."
                    )
                if text[j] == "'":
                    if j + 1 < len(text) and text[j + 1] == "'":
                        parts.append("'")
                        j += 2
                        continue
                    break
                parts.append(text[j])
                j += 1
            tokens.append(_Token("str", text[i : j + 1], "".join(parts), i))
            i = j + 1
            continue
        previous = tokens[-1] if tokens else None
        # A dot right after a value is property access, never the start of a number.
        after_value = previous is not None and (
            previous.kind in ("ident", "num", "str") or previous.text in (")", "]")
        )
        if ch.isdigit() or (ch in "+-" and i + 1 < len(text)) or (ch == "." and not after_value):
            match = _NUMBER_RE.match(text, i)
            if match and not (ch == "." and not match.group().startswith(".")):
                end = match.end()
                if end < len(text) and (text[end].isalnum() or text[end] == "_"):
                    raise ExpressionError(
                        f"Unexpected symbol {text[i : end + 1]!r} at position {i + 1} in "
                        f"expression {text!r}."
                    )
                literal = match.group()
                tokens.append(_Token("num", literal, to_number(literal), i))
                i = end
                continue
        if ch.isalpha() or ch == "_":
            match = _IDENT_RE.match(text, i)
            assert match is not None
            word = match.group()
            tokens.append(_Token("ident", word, word, i))
            i = match.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(_Token("op", op, op, i))
                i += len(op)
                break
        else:
            raise ExpressionError(
                f"Unexpected symbol {ch!r} at position {i + 1} in expression {text!r}."
            )
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


# ---------------------------------------------------------------- syntax tree

Node = tuple[Any, ...]
# ('lit', value) ('ctx', name) ('prop', node, name) ('index', node, node) ('filter', node)
# ('not', node) ('bin', op, left, right) ('call', name, [args])

_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "contains": (2, 2),
    "startswith": (2, 2),
    "endswith": (2, 2),
    "format": (1, None),
    "join": (1, 2),
    "tojson": (1, 1),
    "fromjson": (1, 1),
    "hashfiles": (1, None),
    "success": (0, 0),
    "failure": (0, 0),
    "always": (0, 0),
    "cancelled": (0, 0),
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, op: str) -> None:
        token = self.take()
        if token.text != op or token.kind != "op":
            self.fail(token, f"expected {op!r}")

    def fail(self, token: _Token, what: str) -> None:
        shown = token.text or "end of expression"
        raise ExpressionError(
            f"Unexpected {shown!r} at position {token.pos + 1} in expression {self.text!r}: {what}."
        )

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExpressionError("Empty expression: write a value, e.g. ${{ true }}.")
        node = self.parse_or()
        if self.peek().kind != "end":
            self.fail(self.peek(), "expected an operator or the end of the expression")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.peek().text == "||" and self.peek().kind == "op":
            self.take()
            node = ("bin", "||", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_equality()
        while self.peek().text == "&&" and self.peek().kind == "op":
            self.take()
            node = ("bin", "&&", node, self.parse_equality())
        return node

    def parse_equality(self) -> Node:
        node = self.parse_comparison()
        while self.peek().kind == "op" and self.peek().text in ("==", "!="):
            op = self.take().text
            node = ("bin", op, node, self.parse_comparison())
        return node

    def parse_comparison(self) -> Node:
        node = self.parse_unary()
        while self.peek().kind == "op" and self.peek().text in ("<", "<=", ">", ">="):
            op = self.take().text
            node = ("bin", op, node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text == "!":
            self.take()
            return ("not", self.parse_unary())
        return self.parse_postfix()

    def parse_postfix(self) -> Node:
        node = self.parse_primary()
        while True:
            token = self.peek()
            if token.kind == "op" and token.text == ".":
                self.take()
                name = self.take()
                if name.kind == "op" and name.text == "*":
                    node = ("filter", node)
                elif name.kind == "ident":
                    node = ("prop", node, name.text)
                else:
                    self.fail(name, "expected a property name or * after '.'")
            elif token.kind == "op" and token.text == "[":
                self.take()
                if self.peek().kind == "op" and self.peek().text == "*":
                    self.take()
                    self.expect("]")
                    node = ("filter", node)
                else:
                    index = self.parse_or()
                    self.expect("]")
                    node = ("index", node, index)
            else:
                return node

    def parse_primary(self) -> Node:
        token = self.take()
        if token.kind in ("num", "str"):
            return ("lit", token.value)
        if token.kind == "op" and token.text == "(":
            node = self.parse_or()
            self.expect(")")
            return node
        if token.kind == "ident":
            word = token.text
            if self.peek().kind == "op" and self.peek().text == "(":
                return self.parse_call(token)
            if word == "true":
                return ("lit", True)
            if word == "false":
                return ("lit", False)
            if word == "null":
                return ("lit", None)
            if word == "NaN":
                return ("lit", math.nan)
            if word == "Infinity":
                return ("lit", math.inf)
            return ("ctx", word)
        self.fail(token, "expected a value, a context name, a function call or '('")
        raise AssertionError("unreachable")

    def parse_call(self, name_token: _Token) -> Node:
        name = name_token.text.lower()
        if name not in _FUNCTIONS:
            raise ExpressionError(
                f"Unrecognized function: {name_token.text!r} at position {name_token.pos + 1} "
                f"in expression {self.text!r}; the harness knows "
                f"{', '.join(sorted(_FUNCTIONS))}."
            )
        self.expect("(")
        args: list[Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            args.append(self.parse_or())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                args.append(self.parse_or())
        self.expect(")")
        low, high = _FUNCTIONS[name]
        if len(args) < low or (high is not None and len(args) > high):
            wanted = f"{low}" if low == high else f"{low} to {high if high is not None else 'N'}"
            raise ExpressionError(
                f"Function {name_token.text!r} takes {wanted} argument(s), got {len(args)}, "
                f"in expression {self.text!r}."
            )
        return ("call", name, args)


def parse(expression: str) -> Node:
    """Parse a bare expression (no ``${{ }}``) into a syntax tree; raises ExpressionError."""
    return _Parser(expression).parse()


def calls_status_function(expression: str) -> bool:
    """Whether an expression calls success(), failure(), always() or cancelled() anywhere."""

    def walk(node: Node) -> bool:
        tag = node[0]
        if tag == "call":
            return node[1] in STATUS_FUNCTIONS or any(walk(a) for a in node[2])
        if tag in ("prop", "filter", "not"):
            return walk(node[1])
        if tag == "index":
            return walk(node[1]) or walk(node[2])
        if tag == "bin":
            return walk(node[2]) or walk(node[3])
        return False

    return walk(parse(expression))


# ---------------------------------------------------------------- evaluation


def _format(fmt: str, args: list[Any], expression: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "{":
            if fmt.startswith("{{", i):
                out.append("{")
                i += 2
                continue
            end = fmt.find("}", i)
            spec = fmt[i + 1 : end] if end != -1 else ""
            if end == -1 or not spec.isdigit() or int(spec) >= len(args):
                raise ExpressionError(
                    f"The format string {fmt!r} is invalid at position {i + 1} in expression "
                    f"{expression!r}: use {{N}} with N below the {len(args)} argument(s), and "
                    "{{ or }} for literal braces."
                )
            out.append(to_string(args[int(spec)]))
            i = end + 1
        elif ch == "}":
            if fmt.startswith("}}", i):
                out.append("}")
                i += 2
                continue
            raise ExpressionError(
                f"The format string {fmt!r} has a lone '}}' at position {i + 1} in expression "
                f"{expression!r}: write '}}}}' for a literal brace."
            )
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Evaluator:
    def __init__(self, text: str, ctx: EvalContext) -> None:
        self.text = text
        self.ctx = ctx

    def eval(self, node: Node) -> Any:
        tag = node[0]
        if tag == "lit":
            return node[1]
        if tag == "ctx":
            found = lookup(self.ctx.contexts, node[1])
            if found is MISSING:
                raise ExpressionError(
                    f"Unrecognized named-value: {node[1]!r} in expression {self.text!r}; "
                    f"available contexts: {', '.join(sorted(self.ctx.contexts))}."
                )
            return found
        if tag == "prop":
            return get_property(self.eval(node[1]), node[2])
        if tag == "index":
            return get_index(self.eval(node[1]), self.eval(node[2]))
        if tag == "filter":
            return filter_values(self.eval(node[1]))
        if tag == "not":
            return not truthy(self.eval(node[1]))
        if tag == "bin":
            return self.binary(node[1], node[2], node[3])
        if tag == "call":
            return self.call(node[1], node[2])
        raise AssertionError(f"unknown node {tag}")

    def binary(self, op: str, left_node: Node, right_node: Node) -> Any:
        left = self.eval(left_node)
        if op == "&&":
            return self.eval(right_node) if truthy(left) else left
        if op == "||":
            return left if truthy(left) else self.eval(right_node)
        right = self.eval(right_node)
        if op == "==":
            return loose_equal(left, right)
        if op == "!=":
            return not loose_equal(left, right)
        order = compare(left, right)
        if order is None:
            return False
        return {"<": order < 0, "<=": order <= 0, ">": order > 0, ">=": order >= 0}[op]

    def call(self, name: str, arg_nodes: list[Node]) -> Any:
        status = self.ctx.status
        if name == "success":
            return status == "success"
        if name == "failure":
            return status == "failure"
        if name == "cancelled":
            return status == "cancelled"
        if name == "always":
            return True
        args = [self.eval(a) for a in arg_nodes]
        if name == "contains":
            haystack, needle = args
            if isinstance(haystack, list):
                return any(loose_equal(item, needle) for item in haystack)
            return to_string(needle).casefold() in to_string(haystack).casefold()
        if name == "startswith":
            return to_string(args[0]).casefold().startswith(to_string(args[1]).casefold())
        if name == "endswith":
            return to_string(args[0]).casefold().endswith(to_string(args[1]).casefold())
        if name == "format":
            return _format(to_string(args[0]), args[1:], self.text)
        if name == "join":
            separator = to_string(args[1]) if len(args) > 1 else ","
            if isinstance(args[0], list):
                return separator.join(to_string(item) for item in args[0])
            return "" if isinstance(args[0], dict) else to_string(args[0])
        if name == "tojson":
            return to_json_text(args[0])
        if name == "fromjson":
            source = to_string(args[0])
            try:
                return json.loads(source)
            except json.JSONDecodeError as exc:
                raise ExpressionError(
                    f"fromJSON could not parse {source[:80]!r} ({exc.msg} at line {exc.lineno} "
                    f"column {exc.colno}) in expression {self.text!r}; pass valid JSON."
                ) from exc
        if name == "hashfiles":
            if self.ctx.workspace is None:
                raise ExpressionError(
                    f"hashFiles needs a workspace, and none was given for {self.text!r}; "
                    "pass EvalContext(workspace=...)."
                )
            return hash_files(self.ctx.workspace, [to_string(a) for a in args])
        raise AssertionError(f"unknown function {name}")


def evaluate(expression: str, ctx: EvalContext) -> Any:
    """Evaluate a bare expression (no ``${{ }}``) and return its value with its type."""
    return _Evaluator(expression, ctx).eval(parse(expression))


# ---------------------------------------------------------------- templates


def split_template(template: str) -> list[tuple[Literal["text", "expr"], str]]:
    """Split text with ``${{ }}`` into literal and expression parts; ``}}`` in strings is safe."""
    parts: list[tuple[Literal["text", "expr"], str]] = []
    i = 0
    while True:
        start = template.find("${{", i)
        if start == -1:
            if i < len(template):
                parts.append(("text", template[i:]))
            return parts
        if start > i:
            parts.append(("text", template[i:start]))
        j = start + 3
        in_string = False
        while True:
            if j >= len(template):
                raise ExpressionError(
                    f"Unclosed '${{{{' at position {start + 1} in {template!r}: end the "
                    "expression with '}}'."
                )
            if template[j] == "'":
                in_string = not in_string
            elif not in_string and template.startswith("}}", j):
                break
            j += 1
        parts.append(("expr", template[start + 3 : j].strip()))
        i = j + 2


def interpolate(template: str, ctx: EvalContext) -> Any:
    """Expand a template. A lone ``${{ expr }}`` keeps the value's type; mixed text is a string."""
    parts = split_template(template)
    if len(parts) == 1 and parts[0][0] == "expr" and template.strip() == template:
        return evaluate(parts[0][1], ctx)
    out: list[str] = []
    for kind, text in parts:
        out.append(text if kind == "text" else to_string(evaluate(text, ctx)))
    return "".join(out)


def interpolate_string(template: str, ctx: EvalContext) -> str:
    """Expand a template and stringify the result (``env:``, ``run:``, inputs, outputs)."""
    return to_string(interpolate(template, ctx))


def condition_expression(condition: str) -> str:
    """A step ``if:`` as the expression the runner evaluates (implicit ``success() &&``).

    ``if:`` may be written bare or wrapped in one ``${{ }}``; empty means ``success()``.
    """
    text = condition.strip()
    parts = split_template(text) if "${{" in text else [("expr", text)]
    if len(parts) != 1 or parts[0][0] != "expr":
        raise ExpressionError(
            f"Step condition {condition!r} mixes text and ${{{{ }}}}: write it bare "
            "(if: a == b) or wrap the whole condition in one ${{ }}."
        )
    inner = parts[0][1]
    if inner == "":
        return "success()"
    if calls_status_function(inner):
        return inner
    return f"success() && ({inner})"


def evaluate_condition(condition: str, ctx: EvalContext) -> bool:
    """Evaluate a step ``if:`` with GitHub's implicit ``success() &&``."""
    return truthy(evaluate(condition_expression(condition), ctx))
