"""Values of GitHub expressions: truthiness, number coercion, loose equality, ordering,
stringification, case-insensitive property access, object filters and ``toJSON``. Pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any


class FilteredArray(list[Any]):
    """The result of an object filter (``a.*``): later property access maps over the items."""


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def truthy(value: Any) -> bool:
    """GitHub's truthiness: null, false, 0, -0, NaN and '' are falsy; arrays and objects truthy."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if is_number(value):
        return not (value == 0 or math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


_NUMBER_TEXT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def to_number(value: Any) -> float:
    """Coerce for comparison: null→0, bool→1/0, string→number ('' →0, junk→NaN), else NaN."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0.0
        lowered = text.lower()
        try:
            if lowered.startswith("0x"):
                return float(int(text[2:], 16))
            if lowered.startswith("0o"):
                return float(int(text[2:], 8))
        except ValueError:
            return math.nan
        if text in ("Infinity", "+Infinity"):
            return math.inf
        if text == "-Infinity":
            return -math.inf
        if _NUMBER_TEXT_RE.fullmatch(text):
            return float(text)
        return math.nan
    return math.nan


def to_string(value: Any) -> str:
    """Stringify the way the runner interpolates: null→'', booleans lower-case, 1.0→'1'."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
        return format(number, ".15g")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "Array"
    return "Object"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _coerce(left: Any, right: Any) -> tuple[Any, Any]:
    """The runner's CoerceTypes: number/string meet as numbers; booleans and null become numbers."""
    lk, rk = _kind(left), _kind(right)
    if lk == rk:
        return left, right
    if lk == "number" and rk == "string":
        return left, to_number(right)
    if lk == "string" and rk == "number":
        return to_number(left), right
    if lk in ("boolean", "null"):
        return _coerce(to_number(left), right)
    if rk in ("boolean", "null"):
        return _coerce(left, to_number(right))
    return left, right


def loose_equal(left: Any, right: Any) -> bool:
    """``==``: coerce mismatched kinds to numbers, strings case-insensitive, NaN never equal."""
    left, right = _coerce(left, right)
    lk, rk = _kind(left), _kind(right)
    if lk != rk:
        return False
    if lk == "null":
        return True
    if lk == "number":
        return not (math.isnan(left) or math.isnan(right)) and float(left) == float(right)
    if lk == "string":
        return bool(left.casefold() == right.casefold())
    if lk == "boolean":
        return bool(left == right)
    return left is right


def compare(left: Any, right: Any) -> int | None:
    """Ordering for < <= > >=: -1/0/1, or None when the values are not comparable (NaN, objects)."""
    left, right = _coerce(left, right)
    lk, rk = _kind(left), _kind(right)
    if lk != rk:
        return None
    if lk == "number":
        a, b = float(left), float(right)
        if math.isnan(a) or math.isnan(b):
            return None
        return (a > b) - (a < b)
    if lk == "string":
        x, y = str(left).upper(), str(right).upper()
        return (x > y) - (x < y)
    if lk == "boolean":
        return int(bool(left)) - int(bool(right))
    return None


def get_property(value: Any, name: str) -> Any:
    if isinstance(value, FilteredArray):
        result = FilteredArray()
        for item in value:
            if isinstance(item, dict):
                found = lookup(item, name)
                if found is not MISSING:
                    result.append(found)
        return result
    if isinstance(value, dict):
        found = lookup(value, name)
        return None if found is MISSING else found
    return None


MISSING = object()


def lookup(mapping: Mapping[str, Any], name: str) -> Any:
    if name in mapping:
        return mapping[name]
    folded = name.casefold()
    for key, item in mapping.items():
        if isinstance(key, str) and key.casefold() == folded:
            return item
    return MISSING


def get_index(value: Any, index: Any) -> Any:
    if isinstance(value, FilteredArray):
        return FilteredArray(
            found for item in value if (found := get_index(item, index)) is not None
        )
    if isinstance(value, list):
        if not is_number(index) and not isinstance(index, str):
            return None
        number = to_number(index)
        if math.isnan(number) or not number.is_integer():
            return None
        position = int(number)
        return value[position] if 0 <= position < len(value) else None
    if isinstance(value, dict):
        return get_property(value, to_string(index))
    return None


def filter_values(value: Any) -> FilteredArray:
    items: list[Any]
    if isinstance(value, FilteredArray):
        items = []
        for item in value:
            if isinstance(item, dict):
                items.extend(item.values())
            elif isinstance(item, list):
                items.extend(item)
    elif isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list):
        items = list(value)
    else:
        items = []
    return FilteredArray(items)


def to_json_text(value: Any) -> str:
    """``toJSON``: two-space indented JSON, integral numbers without a fraction."""

    def plain(item: Any) -> Any:
        if is_number(item):
            number = float(item)
            if number.is_integer() and abs(number) < 1e15:
                return int(number)
            return number
        if isinstance(item, dict):
            return {str(k): plain(v) for k, v in item.items()}
        if isinstance(item, list):
            return [plain(v) for v in item]
        return item

    return json.dumps(plain(value), indent=2, ensure_ascii=False)
