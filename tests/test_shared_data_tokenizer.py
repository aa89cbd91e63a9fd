"""Tokenizer: rustbpe training, tiktoken encoding, token bytes, save/load, content hash."""

import json

import pytest
import torch

from shared_data.manifests import pydoc_documents
from shared_data.tokenizer import (
    BOS_TOKEN,
    RANKS_FILE,
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    Tokenizer,
    TokenizerError,
    token_bytes,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def train_texts():
    return pydoc_documents()["train"]


@pytest.fixture(scope="module")
def tokenizer(train_texts):
    return train_tokenizer(train_texts, 1024)


SAMPLES = [
    "The \"assert\" statement is a convenient way to insert debugging assertions.",
    "Numbers: 12345 and 3.14159; unicode: naïve café, 你好, emoji 🙂.",
    "  leading spaces\n\ttabs\r\nand a <|reserved_0|> spelled out as text",
    "",
]


def test_vocab_layout_bos_first_special(tokenizer):
    assert tokenizer.vocab_size == 1024
    assert tokenizer.num_mergeable == 1024 - len(SPECIAL_TOKENS)
    assert tokenizer.bos_token_id == tokenizer.num_mergeable
    assert tokenizer.special_token_ids == tuple(range(1020, 1024))
    assert tokenizer.special_tokens[0] == BOS_TOKEN
    assert tokenizer.pattern == SPLIT_PATTERN


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.num_mergeable for i in ids)  # special spellings stay plain text


def test_batch_encode_and_bos(tokenizer):
    batch = tokenizer.encode(SAMPLES, prepend_bos=True)
    assert [row[0] for row in batch] == [tokenizer.bos_token_id] * len(SAMPLES)
    assert [row[1:] for row in batch] == [tokenizer.encode(t) for t in SAMPLES]
    assert tokenizer.encode("hi", prepend_bos=True)[0] == tokenizer.bos_token_id
    with pytest.raises(TypeError):
        tokenizer.encode(b"bytes")


def test_compresses_english(tokenizer, train_texts):
    text = "\n\n".join(train_texts[:50])
    ids = tokenizer.encode(text)
    assert len(text.encode("utf-8")) / len(ids) > 2.5  # ~2.9 bytes/token at vocab 1024 on this corpus


def test_token_bytes_exclude_specials_and_sum_to_text_bytes(tokenizer):
    table = token_bytes(tokenizer, "cpu")
    assert table.dtype == torch.int64 and table.shape == (tokenizer.vocab_size,)
    assert table[list(tokenizer.special_token_ids)].tolist() == [0] * len(SPECIAL_TOKENS)
    assert (table[: tokenizer.num_mergeable] >= 1).all()
    assert table[:256].tolist() == [1] * 256
    for text in SAMPLES:
        ids = tokenizer.encode(text, prepend_bos=True)
        # exact even where a token splits a multi-byte character (emoji, CJK)
        assert int(table[ids].sum()) == len(text.encode("utf-8"))


def test_training_is_deterministic(tokenizer, train_texts):
    again = train_tokenizer(iter(train_texts), 1024)
    assert again.content_hash == tokenizer.content_hash
    smaller = train_tokenizer(train_texts, 512)
    assert smaller.content_hash != tokenizer.content_hash


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.content_hash == tokenizer.content_hash
    assert loaded.vocab_size == tokenizer.vocab_size
    for text in SAMPLES:
        assert loaded.encode(text) == tokenizer.encode(text)
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["content_hash"] == tokenizer.content_hash


def test_load_refuses_changed_ranks(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    lines = (tmp_path / RANKS_FILE).read_text().splitlines()
    # swap the ranks of two merged tokens: still a valid file, but a different tokenizer
    a_tok, a_rank = lines[300].split()
    b_tok, b_rank = lines[301].split()
    lines[300], lines[301] = f"{a_tok} {b_rank}", f"{b_tok} {a_rank}"
    (tmp_path / RANKS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerError, match="does not match"):
        Tokenizer.load(tmp_path)


def test_load_refuses_missing_or_garbled_files(tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match="missing"):
        Tokenizer.load(tmp_path / "nothing")
    tokenizer.save(tmp_path)
    (tmp_path / RANKS_FILE).write_text("not base64 at all\n")
    with pytest.raises(TokenizerError):
        Tokenizer.load(tmp_path)


def test_vocab_larger_than_text_supports_is_refused():
    with pytest.raises(TokenizerError, match="only supports"):
        train_tokenizer(["hello world"] * 3, 1024)
    with pytest.raises(TokenizerError, match="at least"):
        train_tokenizer(["hello"], 100)


def test_constructor_rejects_bad_ranks():
    ranks = {bytes([i]): i for i in range(256)}
    with pytest.raises(TokenizerError):
        Tokenizer(SPLIT_PATTERN, {k: v + 1 for k, v in ranks.items()})
    del ranks[b"a"]
    with pytest.raises(TokenizerError):
        Tokenizer(SPLIT_PATTERN, ranks)
