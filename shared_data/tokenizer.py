"""BPE tokenizer: trained with rustbpe, encoded with tiktoken, identified by a content hash.

Training uses the GPT-4 split pattern with numbers grouped by at most two digits (as upstream
autoresearch and nanochat do; better for small vocabularies). The vocabulary is the 256 byte
tokens, the learned merges, then `SPECIAL_TOKENS` at the top ids; the first special token is BOS.
Special tokens never appear in ordinary text: `encode` treats their spelling as plain text.

On disk a tokenizer is two files: `tokenizer.tiktoken` (one `base64(token bytes) rank` line per
mergeable token, tiktoken's own format) and `tokenizer.json` (split pattern, special tokens,
content hash). `content_hash` is the sha256 over the pattern, the special tokens and the ranks
file, so it changes when and only when tokenization changes; it goes into every result, and
`load` refuses files whose content does not match the hash they were saved with.

torch is imported only by `token_bytes`, so this module also works where torch is absent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, overload

import tiktoken

from shared_data.cache import atomic_write_bytes

if TYPE_CHECKING:
    import torch

SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = tuple(f"<|reserved_{i}|>" for i in range(4))  # reserved as upstream; [0] is BOS
BOS_TOKEN = SPECIAL_TOKENS[0]
FORMAT_VERSION = 1
RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer.json"
ENCODE_THREADS = max(1, min(8, os.cpu_count() or 1))


class TokenizerError(ValueError):
    """A tokenizer cannot be trained as asked, or its files are missing or do not match their hash."""


def _ranks_text(mergeable_ranks: dict[bytes, int]) -> bytes:
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}" for token, rank in
             sorted(mergeable_ranks.items(), key=lambda item: item[1])]
    return ("\n".join(lines) + "\n").encode("ascii")


def _content_hash(pattern: str, special_tokens: tuple[str, ...], ranks_text: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(f"autoswarm-tokenizer-v{FORMAT_VERSION}\n".encode())
    digest.update(json.dumps({"pattern": pattern, "special_tokens": list(special_tokens)},
                             sort_keys=True).encode("utf-8"))
    digest.update(b"\n")
    digest.update(ranks_text)
    return digest.hexdigest()


class Tokenizer:
    """A byte-level BPE tokenizer with reserved special tokens (BOS first)."""

    def __init__(self, pattern: str, mergeable_ranks: dict[bytes, int],
                 special_tokens: tuple[str, ...] = SPECIAL_TOKENS) -> None:
        if sorted(mergeable_ranks.values()) != list(range(len(mergeable_ranks))):
            raise TokenizerError("mergeable ranks must be exactly 0..n-1")
        if len(mergeable_ranks) < 256 or any(bytes([b]) not in mergeable_ranks for b in range(256)):
            raise TokenizerError("mergeable ranks must contain all 256 single bytes")
        if not special_tokens:
            raise TokenizerError("at least one special token (BOS) is required")
        self.pattern = pattern
        self.special_tokens = tuple(special_tokens)
        self._ranks_text = _ranks_text(mergeable_ranks)
        self.content_hash = _content_hash(pattern, self.special_tokens, self._ranks_text)
        offset = len(mergeable_ranks)
        self._enc = tiktoken.Encoding(
            name=f"autoswarm-{self.content_hash[:12]}",
            pat_str=pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens={token: offset + i for i, token in enumerate(self.special_tokens)},
        )
        self.vocab_size: int = self._enc.n_vocab
        self.num_mergeable: int = offset
        self.bos_token_id: int = offset  # the first special token
        self.special_token_ids: tuple[int, ...] = tuple(range(offset, offset + len(self.special_tokens)))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, content_hash={self.content_hash[:12]}...)"

    # -- encoding ----------------------------------------------------------------------------

    @overload
    def encode(self, text: str, prepend_bos: bool = False) -> list[int]: ...

    @overload
    def encode(self, text: list[str], prepend_bos: bool = False) -> list[list[int]]: ...

    def encode(self, text: str | list[str], prepend_bos: bool = False) -> list[int] | list[list[int]]:
        """Token ids of `text` (or of each text in a list). Special-token spellings stay plain text."""
        if isinstance(text, str):
            ids = self._enc.encode_ordinary(text)
            return [self.bos_token_id, *ids] if prepend_bos else ids
        if isinstance(text, list):
            batch = self._enc.encode_ordinary_batch(text, num_threads=ENCODE_THREADS)
            if prepend_bos:
                for ids in batch:
                    ids.insert(0, self.bos_token_id)
            return batch
        raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def token_byte_lengths(self) -> list[int]:
        """Bytes each token stands for; 0 for special tokens (they are not text).

        The raw length of the token's bytes, so the lengths of a text's tokens sum to exactly its
        UTF-8 length. (Upstream measures the decoded string instead, which counts a token holding
        part of a multi-byte character as U+FFFD, 3 bytes.)
        """
        lengths = [len(self._enc.decode_single_token_bytes(i)) for i in range(self.num_mergeable)]
        return lengths + [0] * len(self.special_tokens)

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: Path | str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / RANKS_FILE, self._ranks_text)
        meta = {
            "format": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
            "vocab_size": self.vocab_size,
            "content_hash": self.content_hash,
        }
        # the meta file is written last: its presence means the ranks file is complete
        atomic_write_bytes(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, directory: Path | str) -> Tokenizer:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            ranks_text = (directory / RANKS_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise TokenizerError(f"tokenizer files missing in {directory}: {exc.filename}") from exc
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{directory / META_FILE} is not valid JSON: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise TokenizerError(f"{directory}: tokenizer format {meta.get('format')} is not supported")
        try:
            ranks: dict[bytes, int] = {}
            for line in ranks_text.decode("ascii").splitlines():
                token_b64, rank = line.split(" ")
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
            tokenizer = cls(meta["pattern"], ranks, tuple(meta["special_tokens"]))
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{directory}: tokenizer files are corrupted ({exc})") from exc
        if tokenizer.content_hash != meta.get("content_hash"):
            raise TokenizerError(
                f"{directory}: tokenizer content hash {tokenizer.content_hash[:12]} does not match the "
                f"recorded {str(meta.get('content_hash'))[:12]}; the files were changed or corrupted"
            )
        return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a BPE tokenizer of exactly `vocab_size` tokens (specials included) on `texts`."""
    import rustbpe

    num_mergeable = vocab_size - len(SPECIAL_TOKENS)
    if num_mergeable < 256:
        raise TokenizerError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), num_mergeable, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    if len(ranks) != num_mergeable:
        raise TokenizerError(
            f"the training text only supports {len(ranks) + len(SPECIAL_TOKENS)} tokens, "
            f"{vocab_size} were asked for: train on more text or lower the vocab size"
        )
    return Tokenizer(trainer.get_pattern(), ranks, SPECIAL_TOKENS)


def token_bytes(tokenizer: Tokenizer, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 [vocab_size]: UTF-8 bytes of each token's text, 0 for special tokens (bpb denominator)."""
    import torch

    return torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.int64, device=device)
