"""trainer.constants: reading and rewriting train.py's top-level constants through the AST."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.constants import (
    AmbiguousConstantError,
    ConstantsSyntaxError,
    UnknownConstantError,
    UnsupportedValueError,
    format_value,
    read_constants,
    rewrite_constants,
)
from trainer.profiles import load_profiles

TRAIN_PY = Path(__file__).resolve().parent.parent / "trainer" / "train.py"

SOURCE = '''"""A docstring mentioning DEPTH = 99 that must not change."""
# comment: DEPTH = 42 in a comment stays as written
import math

DEPTH = 8                # layers (this comment survives)
ASPECT_RATIO = 64        # model_dim = DEPTH * ASPECT_RATIO
WINDOW_PATTERN = "SSSL"  # S = half context
TOTAL_BATCH_SIZE = 2**19 # tokens per step
ADAM_BETAS = (0.8, 0.95) # Adam betas
MATRIX_LR: float = 0.04  # annotated
LONG = (
    1,   # first
    2,   # second
)
NEGATIVE = -1
derived = DEPTH * 2
NOT_LITERAL = math.sqrt(2)


def f():
    DEPTH = 3  # a local, not a constant
    return DEPTH
'''


def test_read_constants_literals_arithmetic_and_annotations():
    constants = read_constants(SOURCE)
    assert constants == {
        "DEPTH": 8, "ASPECT_RATIO": 64, "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 2**19,
        "ADAM_BETAS": (0.8, 0.95), "MATRIX_LR": 0.04, "LONG": (1, 2), "NEGATIVE": -1,
    }
    assert "NOT_LITERAL" not in constants and "derived" not in constants


def test_rewrite_changes_only_the_value_spans():
    out = rewrite_constants(SOURCE, {"DEPTH": 4, "WINDOW_PATTERN": "L", "TOTAL_BATCH_SIZE": 2**16})
    before, after = SOURCE.splitlines(), out.splitlines()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert changed == [
        ("DEPTH = 8                # layers (this comment survives)",
         "DEPTH = 4                # layers (this comment survives)"),
        ('WINDOW_PATTERN = "SSSL"  # S = half context', 'WINDOW_PATTERN = "L"  # S = half context'),
        ("TOTAL_BATCH_SIZE = 2**19 # tokens per step", "TOTAL_BATCH_SIZE = 2**16 # tokens per step"),
    ]
    assert read_constants(out)["DEPTH"] == 4
    assert "DEPTH = 3  # a local" in out and "DEPTH = 99" in out and "DEPTH = 42 in a comment" in out


def test_rewrite_tuples_annotations_and_multiline_values():
    out = rewrite_constants(SOURCE, {"ADAM_BETAS": [0.9, 0.99], "MATRIX_LR": 0.02, "LONG": (3,)})
    constants = read_constants(out)
    assert constants["ADAM_BETAS"] == (0.9, 0.99)  # a JSON list lands as the file's tuple
    assert "ADAM_BETAS = (0.9, 0.99) # Adam betas" in out
    assert "MATRIX_LR: float = 0.02  # annotated" in out
    assert constants["LONG"] == (3,) and "LONG = (3,)\nNEGATIVE = -1" in out


def test_equal_value_keeps_original_spelling():
    out = rewrite_constants(SOURCE, {"TOTAL_BATCH_SIZE": 524288, "DEPTH": 8})
    assert out == SOURCE


def test_missing_constant_is_a_typed_error_and_nothing_changes():
    with pytest.raises(UnknownConstantError) as info:
        rewrite_constants(SOURCE, {"DEPTH": 4, "NOT_THERE": 1, "derived": 3, "NOT_LITERAL": 2.0})
    assert info.value.names == ["NOT_LITERAL", "NOT_THERE", "derived"]
    assert "NOT_THERE" in str(info.value)


def test_ambiguous_unsupported_and_syntax_errors():
    with pytest.raises(AmbiguousConstantError):
        rewrite_constants("A = 1\nA = 2\n", {"A": 3})
    with pytest.raises(UnsupportedValueError):
        rewrite_constants(SOURCE, {"DEPTH": float("nan")})
    with pytest.raises(UnsupportedValueError):
        rewrite_constants(SOURCE, {"DEPTH": {"a": 1}})
    with pytest.raises(ConstantsSyntaxError):
        read_constants("DEPTH = = 3\n")


def test_non_ascii_before_a_constant_uses_byte_offsets():
    source = 'NAME = "héllo wörld"; DEPTH = 8  # ünïcode\n'
    out = rewrite_constants(source, {"DEPTH": 12})
    assert out == 'NAME = "héllo wörld"; DEPTH = 12  # ünïcode\n'


def test_format_value():
    assert format_value(2**17) == "2**17"
    assert format_value(1000) == "1000"
    assert format_value(True) == "True"
    assert format_value((1,)) == "(1,)"
    assert format_value(0.5) == "0.5"
    assert format_value("SSL") == '"SSL"'
    assert format_value('say "hi"') == repr('say "hi"')


def test_every_profile_applies_to_the_shipped_train_py():
    source = TRAIN_PY.read_text(encoding="utf-8")
    upstream = read_constants(source)
    for key, value in {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL",
                       "TOTAL_BATCH_SIZE": 2**19, "DEVICE_BATCH_SIZE": 128, "EMBEDDING_LR": 0.6,
                       "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2,
                       "ADAM_BETAS": (0.8, 0.95), "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5,
                       "FINAL_LR_FRAC": 0.0}.items():
        assert upstream[key] == value, key
    # the constants block is the only top-level UPPER_CASE literal: what the proposer may perturb
    assert set(upstream) == {"DEPTH", "ASPECT_RATIO", "HEAD_DIM", "GQA_GROUP_SIZE", "WINDOW_PATTERN",
                             "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "EMBEDDING_LR", "UNEMBEDDING_LR",
                             "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETAS", "WARMUP_RATIO",
                             "WARMDOWN_RATIO", "FINAL_LR_FRAC"}
    for name, profile in load_profiles().classes.items():
        patched = rewrite_constants(source, profile.constants)
        constants = read_constants(patched)
        for key, value in profile.constants.items():
            assert constants[key] == value, (name, key)
        compile(patched, f"train-{name}.py", "exec")
