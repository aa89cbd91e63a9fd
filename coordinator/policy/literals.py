"""Constant values as Python literals, and the keys that identify a constant change.

`Hypothesis.constant_changes` stores NAME -> literal text. Trainer constants are written the way
upstream writes them (`2**19`, `(0.8, 0.95)`, `"SSSL"`), so parsing accepts small arithmetic on
numbers as well as plain literals; nothing else is evaluated.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping

Value = int | float | str | bool | tuple  # what a trainer constant may hold


class LiteralError(ValueError):
    """A constant's text is not a literal the policy understands."""


_BINARY: dict[type, Callable[[object, object], object]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def parse_literal(text: str) -> Value:
    """`"0.04"` -> 0.04, `"2**19"` -> 524288, `"(0.8, 0.95)"` -> (0.8, 0.95), `'"SSSL"'` -> "SSSL"."""
    return _parse_cached(text)


@functools.lru_cache(maxsize=65536)
def _parse_cached(text: str) -> Value:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise LiteralError(f"not a Python literal: {text!r}") from exc
    return _evaluate(tree.body, text)


def _evaluate(node: ast.AST, text: str) -> Value:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return node.value
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_evaluate(e, text) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand, text)
        if not _is_number(operand):
            raise LiteralError(f"unary sign on a non-number in {text!r}")
        return -operand if isinstance(node.op, ast.USub) else operand  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, text), _evaluate(node.right, text)
        if not (_is_number(left) and _is_number(right)):
            raise LiteralError(f"arithmetic on a non-number in {text!r}")
        if isinstance(node.op, ast.Pow) and abs(right) > 64:  # type: ignore[arg-type]
            raise LiteralError(f"exponent too large in {text!r}")
        try:
            return _BINARY[type(node.op)](left, right)  # type: ignore[return-value]
        except ZeroDivisionError as exc:
            raise LiteralError(f"division by zero in {text!r}") from exc
    raise LiteralError(f"not a constant literal: {text!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def round_significant(value: float, digits: int = 3) -> float:
    """0.04 * 1.25 -> 0.05 (not 0.05000000000000001): proposals read like a person wrote them."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def render_literal(value: Value) -> str:
    """The literal text for a value, as train.py writes it (the trainer's own AST rewriter decides:
    powers of two from 1024 up are `2**N` as upstream does)."""
    from trainer.constants import ConstantsError, format_value

    if isinstance(value, list):  # literals here are tuples; a list is not a constant value
        raise LiteralError(f"cannot write {value!r} as a constant literal")
    try:
        return format_value(value)
    except ConstantsError as exc:
        raise LiteralError(str(exc)) from None


def same_value(a: object, b: object) -> bool:
    """Equal as constants: 2**19 == 524288, 0.5 == 0.50, (0.8, 0.95) == [0.8, 0.95]."""
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)  # type: ignore[arg-type]
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def parse_constants(literals: Mapping[str, str]) -> dict[str, Value]:
    """NAME -> literal text into NAME -> value; names whose text does not parse are left out."""
    out: dict[str, Value] = {}
    for name, text in literals.items():
        try:
            out[name] = parse_literal(text)
        except LiteralError:
            continue
    return out


def _canonical(value: object) -> str:
    if isinstance(value, tuple | list):
        return "(" + ",".join(_canonical(v) for v in value) + ")"
    if _is_number(value):
        return repr(float(value))  # type: ignore[arg-type]
    return repr(value)


def move_key(moves: Iterable[tuple[str, object, object]]) -> str:
    """Identity of a change: the set of (NAME, value before, value after), order-free.

    Two hypotheses that make the same moves (same constants from the same values to the same
    values) are the same experiment, whatever else differs between their bases.
    """
    parts = sorted(f"{name}:{_canonical(before)}->{_canonical(after)}" for name, before, after in moves)
    return ";".join(parts)


def constants_key(constants: Mapping[str, object]) -> str:
    """A short identity of a whole constants block (equal values give equal keys)."""
    import hashlib

    text = ";".join(f"{name}={_canonical(value)}" for name, value in sorted(constants.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def change_key(base_constants: Mapping[str, object], moves: Iterable[tuple[str, object, object]]) -> str:
    """Identity of a change on a given base: the same moves from the same constants block."""
    return f"{constants_key(base_constants)}|{move_key(moves)}"
