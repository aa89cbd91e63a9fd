"""Read and rewrite the top-level UPPER_CASE constants of a train.py, through the AST.

The coordinator (no torch) and the runner use this to apply a class profile or a constant-only
hypothesis to a copy of train.py. Only the value expression of each assignment is replaced, by
its exact source span, so comments, blank lines and the rest of the formatting stay as written.
Never regex: a regex cannot tell `DEPTH = 8` at top level from a string or a nested scope.

A *constant* is a top-level `NAME = <literal>` or `NAME: T = <literal>` where NAME is UPPER_CASE
and the literal is a number, string, bool, None, a tuple/list of those, or simple arithmetic on
numbers (`2**19`, `40 * 524288`, `-1`), as upstream writes them.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "ConstantsError",
    "ConstantsSyntaxError",
    "UnknownConstantError",
    "AmbiguousConstantError",
    "UnsupportedValueError",
    "ConstantSite",
    "read_constants",
    "constant_sites",
    "rewrite_constants",
    "format_value",
]

_UPPER_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

_BINARY_OPS: dict[type[ast.operator], Callable[[object, object], object]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}


class ConstantsError(ValueError):
    """Base class: the constants of a train.py could not be read or rewritten as asked."""


class ConstantsSyntaxError(ConstantsError):
    """The source does not parse as Python (before or after a rewrite)."""


class UnknownConstantError(ConstantsError, KeyError):
    """A name to rewrite is not a top-level UPPER_CASE literal constant of the source."""

    def __init__(self, names: list[str]) -> None:
        self.names = sorted(names)
        super().__init__(f"not a top-level constant of train.py: {', '.join(self.names)}")

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0])


class AmbiguousConstantError(ConstantsError):
    """A constant is assigned more than once at top level, so which one to rewrite is unclear."""


class UnsupportedValueError(ConstantsError):
    """A new value cannot be written as a Python literal (or is not finite)."""


@dataclass(frozen=True)
class ConstantSite:
    """Where one constant's value expression sits in the source (1-based lines, 0-based UTF-8 columns)."""

    name: str
    value: object
    lineno: int
    col_offset: int
    end_lineno: int
    end_col_offset: int
    annotated: bool


def _eval_literal(node: ast.expr) -> object:
    """Evaluate a literal expression, allowing number arithmetic; raise ValueError otherwise."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        raise ValueError(f"unsupported constant type {type(node.value).__name__}")
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_eval_literal(element) for element in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _eval_literal(node.operand)
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise ValueError("unary sign on a non-number")
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _eval_literal(node.left), _eval_literal(node.right)
        numbers = (int, float)
        if isinstance(left, bool) or isinstance(right, bool):
            raise ValueError("arithmetic on booleans")
        if not (isinstance(left, numbers) and isinstance(right, numbers)):
            raise ValueError("arithmetic on non-numbers")
        if isinstance(node.op, ast.Pow) and abs(right) > 256:
            raise ValueError("exponent too large for a constant")
        return _BINARY_OPS[type(node.op)](left, right)
    raise ValueError(f"not a literal: {type(node).__name__}")


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ConstantsSyntaxError(f"train.py does not parse: {exc.msg} (line {exc.lineno})") from exc


def _top_level_sites(tree: ast.Module) -> list[ConstantSite]:
    sites: list[ConstantSite] = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            if len(statement.targets) != 1 or not isinstance(statement.targets[0], ast.Name):
                continue
            name, value_node, annotated = statement.targets[0].id, statement.value, False
        elif isinstance(statement, ast.AnnAssign):
            if not isinstance(statement.target, ast.Name) or statement.value is None:
                continue
            name, value_node, annotated = statement.target.id, statement.value, True
        else:
            continue
        if not _UPPER_NAME.match(name):
            continue
        try:
            value = _eval_literal(value_node)
        except (ValueError, ArithmeticError):
            continue
        assert value_node.end_lineno is not None and value_node.end_col_offset is not None
        sites.append(
            ConstantSite(
                name=name,
                value=value,
                lineno=value_node.lineno,
                col_offset=value_node.col_offset,
                end_lineno=value_node.end_lineno,
                end_col_offset=value_node.end_col_offset,
                annotated=annotated,
            )
        )
    return sites


def constant_sites(source: str) -> list[ConstantSite]:
    """Every top-level UPPER_CASE literal assignment, in source order (duplicates included)."""
    return _top_level_sites(_parse(source))


def read_constants(source: str) -> dict[str, object]:
    """Top-level UPPER_CASE literal constants of `source` by name (the last assignment wins, as at run time).

    Tuples stay tuples and lists stay lists. Raises ConstantsSyntaxError if the source does not parse.
    """
    return {site.name: site.value for site in constant_sites(source)}


def format_value(value: object) -> str:
    """A Python literal for `value`; large powers of two are written `2**k` as upstream does."""
    if isinstance(value, str):
        # Double quotes, as train.py writes its strings, when nothing needs escaping.
        return f'"{value}"' if value.isprintable() and '"' not in value and "\\" not in value else repr(value)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value >= 1024 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsupportedValueError(f"not a finite number: {value!r}")
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(format_value(item) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    raise UnsupportedValueError(f"cannot write {type(value).__name__} {value!r} as a train.py constant")


def _line_starts(encoded: bytes) -> list[int]:
    """Byte offset of the start of each line (index 0 is line 1); AST columns are UTF-8 byte offsets."""
    starts = [0]
    for index, byte in enumerate(encoded):
        if byte == 0x0A:
            starts.append(index + 1)
    return starts


def rewrite_constants(source: str, values: Mapping[str, object]) -> str:
    """Return `source` with each named top-level constant's value replaced by `values[name]`.

    Only the value expression changes; the name, any annotation, trailing comments and every other
    byte of the file stay as they were. A list given for a tuple constant is written as a tuple
    (JSON profiles have no tuples). A value equal to the current one (same type) is left
    untouched so its original spelling (e.g. `2**19`) survives. Nothing is partially applied:
    on any error the caller's source is unchanged (strings are immutable) and an error is raised.

    Raises UnknownConstantError (a name is not a constant of the source), AmbiguousConstantError
    (assigned twice at top level), UnsupportedValueError (value not writable), ConstantsSyntaxError.
    """
    sites = constant_sites(source)
    by_name: dict[str, list[ConstantSite]] = {}
    for site in sites:
        by_name.setdefault(site.name, []).append(site)
    missing = [name for name in values if name not in by_name]
    if missing:
        raise UnknownConstantError(missing)
    ambiguous = sorted(name for name in values if len(by_name[name]) > 1)
    if ambiguous:
        raise AmbiguousConstantError(f"assigned more than once at top level: {', '.join(ambiguous)}")

    encoded = source.encode("utf-8")
    starts = _line_starts(encoded)
    wanted: dict[str, object] = {}
    edits: list[tuple[int, int, bytes]] = []
    for name, new_value in values.items():
        site = by_name[name][0]
        if isinstance(site.value, tuple) and isinstance(new_value, list):
            new_value = tuple(new_value)  # JSON has no tuples; keep the file's container kind
        wanted[name] = new_value
        if type(site.value) is type(new_value) and site.value == new_value:
            continue
        text = format_value(new_value)
        begin = starts[site.lineno - 1] + site.col_offset
        end = starts[site.end_lineno - 1] + site.end_col_offset
        edits.append((begin, end, text.encode("utf-8")))
    for begin, end, text in sorted(edits, reverse=True):
        encoded = encoded[:begin] + text + encoded[end:]
    result = encoded.decode("utf-8")

    # The rewrite must round-trip: parse, and read back exactly the values asked for.
    after = read_constants(result)
    for name, new_value in wanted.items():
        if after.get(name) != new_value:
            raise ConstantsError(f"rewriting {name} did not round-trip (got {after.get(name)!r})")
    return result
