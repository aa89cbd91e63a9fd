"""Dataset manifests: which files make up a dataset, how big they are, and their sha256.

A manifest pins everything that changes what a model sees: the files and their checksums, the
validation split, the text column, the tokenizer vocabulary size and how much text trains it. Its
`manifest_id` is the sha256 of its canonical JSON; the coordinator pins one id and a volunteer
refuses to run on data prepared from any other manifest.

Three datasets are known:

- `pydoc`: real English prose shipped inside Python itself (`pydoc_data.topics`, about 466 KB), so
  it works offline in tests, CI and the CPU demo. Each topic is cut into documents at paragraph
  boundaries; a document goes to validation when the sha256 of its text, read as a number, is 0
  mod 8 (deterministic, order independent). Both splits are materialized as parquet files so the
  dataloader has one code path. Their sizes and checksums are computed here from the running
  interpreter's `pydoc_data` and written with the parquet writer pinned in the lock file: nodes
  on Python versions whose pydoc text differs get different manifest ids and are refused, which is
  correct, since they would train and evaluate on different text.
- `climbmix`: parquet shards of karpathy/climbmix-400b-shuffle on the Hugging Face hub, the first
  ten shards for training and shard 06542 pinned for validation, as upstream autoresearch does.
- `tinystories`: karpathy/tinystories-gpt4-clean, a single parquet file; its first
  `val_holdout_rows` rows are held out as the pinned validation split.

Remote manifests (climbmix, tinystories) live as JSON in `shared_data/manifests/`. Their sha256
and size fields are empty (`""`, `0`) until someone downloads the real files and records them:
this code was written where the hub cannot be reached, and a checksum that was never computed
from the real bytes would be worse than none. Such a manifest is *unpinned* (`Manifest.pinned`
is False): its id names the source (URLs, splits, settings), and `download.py` records the size
and sha256 of each file on its first complete download in a lock file beside the data
(trust on first use), then refuses any later bytes that differ. The prepared record carries a
`content_id` over the verified checksums, so results from nodes whose bytes differ can still be
told apart. `python -m shared_data.manifests --pin-from DATA_DIR climbmix` prints the manifest
with the recorded checksums filled in; committing that JSON pins it for everyone.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

MANIFEST_SCHEMA = 1  # bump when the meaning of a manifest field changes
SPLITS = ("train", "val")
SHA256_HEX_LEN = 64


class ManifestError(ValueError):
    """A manifest is malformed or inconsistent."""


class UnknownManifestError(ValueError):
    """No manifest is registered under that name."""


@dataclass(frozen=True)
class ManifestFile:
    name: str  # file name inside the dataset's data folder
    url: str  # where to fetch it (`pydoc://` for files materialized locally)
    size: int  # bytes; 0 = not recorded yet (unpinned)
    sha256: str  # hex digest; "" = not recorded yet (unpinned)
    split: str  # "train" | "val"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise ManifestError(f"manifest file name must be a plain file name, got {self.name!r}")
        if self.split not in SPLITS:
            raise ManifestError(f"file {self.name}: split must be one of {SPLITS}, got {self.split!r}")
        if self.size < 0:
            raise ManifestError(f"file {self.name}: size must be >= 0, got {self.size}")
        if self.sha256 and (len(self.sha256) != SHA256_HEX_LEN or self.sha256.strip("0123456789abcdef")):
            raise ManifestError(f"file {self.name}: sha256 must be 64 lowercase hex chars, got {self.sha256!r}")

    @property
    def pinned(self) -> bool:
        return bool(self.sha256) and self.size > 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "size": self.size, "sha256": self.sha256, "split": self.split}


@dataclass(frozen=True)
class Manifest:
    name: str
    files: tuple[ManifestFile, ...]
    vocab_size: int
    text_column: str = "text"
    # rows at the start of the (single) train file held out as validation, for datasets published
    # as one file; 0 when the manifest names val files itself
    val_holdout_rows: int = 0
    tokenizer_max_chars: int = 1_000_000_000  # text used to train the tokenizer (upstream's cap)
    tokenizer_doc_chars: int = 10_000  # each document is cut to this many chars for tokenizer training
    description: str = field(default="", compare=False)  # for people; not part of the id

    def __post_init__(self) -> None:
        if not self.name:
            raise ManifestError("manifest name must not be empty")
        if not isinstance(self.files, tuple):
            object.__setattr__(self, "files", tuple(self.files))
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ManifestError(f"manifest {self.name}: duplicate file names in {names}")
        train = [f for f in self.files if f.split == "train"]
        val = [f for f in self.files if f.split == "val"]
        if not train:
            raise ManifestError(f"manifest {self.name}: needs at least one train file")
        if self.val_holdout_rows < 0:
            raise ManifestError(f"manifest {self.name}: val_holdout_rows must be >= 0")
        if self.val_holdout_rows and (val or len(train) != 1):
            raise ManifestError(
                f"manifest {self.name}: val_holdout_rows applies to a single train file and no val files"
            )
        if not val and not self.val_holdout_rows:
            raise ManifestError(f"manifest {self.name}: needs val files or val_holdout_rows > 0")
        if self.vocab_size < 260:  # 256 byte tokens + the reserved special tokens
            raise ManifestError(f"manifest {self.name}: vocab_size must be >= 260, got {self.vocab_size}")
        if self.tokenizer_max_chars <= 0 or self.tokenizer_doc_chars <= 0:
            raise ManifestError(f"manifest {self.name}: tokenizer char limits must be positive")

    @property
    def pinned(self) -> bool:
        """True when every file's size and sha256 are recorded in the manifest itself."""
        return all(f.pinned for f in self.files)

    def split_files(self, split: str) -> tuple[ManifestFile, ...]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return tuple(f for f in self.files if f.split == split)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "files": [f.to_dict() for f in self.files],
            "vocab_size": self.vocab_size,
            "text_column": self.text_column,
            "val_holdout_rows": self.val_holdout_rows,
            "tokenizer_max_chars": self.tokenizer_max_chars,
            "tokenizer_doc_chars": self.tokenizer_doc_chars,
            "description": self.description,
        }

    def canonical_json(self) -> str:
        """The JSON the id is computed from: every field except the description, sorted keys."""
        body = self.to_dict()
        del body["description"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def manifest_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Manifest:
        try:
            schema = obj.get("schema", MANIFEST_SCHEMA)
            if schema != MANIFEST_SCHEMA:
                raise ManifestError(f"manifest schema {schema} is not supported (expected {MANIFEST_SCHEMA})")
            files = tuple(
                ManifestFile(
                    name=f["name"], url=f["url"], size=int(f.get("size", 0)), sha256=f.get("sha256", ""),
                    split=f["split"],
                )
                for f in obj["files"]
            )
            return cls(
                name=obj["name"],
                files=files,
                vocab_size=int(obj["vocab_size"]),
                text_column=obj.get("text_column", "text"),
                val_holdout_rows=int(obj.get("val_holdout_rows", 0)),
                tokenizer_max_chars=int(obj.get("tokenizer_max_chars", 1_000_000_000)),
                tokenizer_doc_chars=int(obj.get("tokenizer_doc_chars", 10_000)),
                description=obj.get("description", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: missing or wrong field ({exc})") from exc

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc

    def with_checksums(self, checksums: dict[str, tuple[int, str]]) -> Manifest:
        """A copy with (size, sha256) filled in for the named files; other files are unchanged."""
        unknown = set(checksums) - {f.name for f in self.files}
        if unknown:
            raise ManifestError(f"manifest {self.name}: no files named {sorted(unknown)}")
        files = tuple(
            replace(f, size=checksums[f.name][0], sha256=checksums[f.name][1]) if f.name in checksums else f
            for f in self.files
        )
        return replace(self, files=files)


# ---------------------------------------------------------------------------
# pydoc: an offline corpus materialized from the interpreter's own documentation
# ---------------------------------------------------------------------------

PYDOC_URL = "pydoc://pydoc_data.topics"
PYDOC_VOCAB_SIZE = 1024  # ~159k tokens over the corpus, ~2.9 bytes per token
PYDOC_MAX_DOC_CHARS = 500  # paragraphs grouped into documents up to this size (~170 tokens; packs well at seq 256)
PYDOC_VAL_MODULUS = 8  # one document in eight goes to validation (~19k tokens at vocab 1024)
PYDOC_FILES = {"train": "pydoc-train.parquet", "val": "pydoc-val.parquet"}


def pydoc_documents() -> dict[str, list[str]]:
    """The pydoc corpus cut into documents and split deterministically into train and val."""
    from pydoc_data.topics import topics

    splits: dict[str, list[str]] = {"train": [], "val": []}
    for topic in sorted(topics):
        paragraphs = [p for p in topics[topic].split("\n\n") if p.strip()]
        current: list[str] = []
        current_chars = 0
        documents: list[str] = []
        for paragraph in paragraphs:
            if current and current_chars + len(paragraph) + 2 > PYDOC_MAX_DOC_CHARS:
                documents.append("\n\n".join(current))
                current, current_chars = [], 0
            current.append(paragraph)
            current_chars += len(paragraph) + 2
        if current:
            documents.append("\n\n".join(current))
        for document in documents:
            digest = hashlib.sha256(document.encode("utf-8")).digest()
            is_val = int.from_bytes(digest[:8], "big") % PYDOC_VAL_MODULUS == 0
            splits["val" if is_val else "train"].append(document)
    return splits


@functools.cache
def pydoc_parquet_bytes() -> dict[str, bytes]:
    """The exact bytes of the two pydoc parquet files (what their manifest checksums cover)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, bytes] = {}
    for split, documents in pydoc_documents().items():
        sink = pa.BufferOutputStream()
        table = pa.table({"text": pa.array(documents, type=pa.string())})
        # fixed writer options: the bytes, hence the checksum, depend only on the text and pyarrow
        pq.write_table(table, sink, compression="zstd", row_group_size=128, write_statistics=False)
        out[PYDOC_FILES[split]] = sink.getvalue().to_pybytes()
    return out


@functools.cache
def _pydoc_manifest() -> Manifest:
    blobs = pydoc_parquet_bytes()
    files = tuple(
        ManifestFile(
            name=file_name, url=f"{PYDOC_URL}#{split}", size=len(blobs[file_name]),
            sha256=hashlib.sha256(blobs[file_name]).hexdigest(), split=split,
        )
        for split, file_name in PYDOC_FILES.items()
    )
    return Manifest(
        name="pydoc",
        files=files,
        vocab_size=PYDOC_VOCAB_SIZE,
        text_column="text",
        tokenizer_max_chars=10_000_000,  # the whole train split,
        tokenizer_doc_chars=100_000,  # documents uncut
        description="English prose from the running interpreter's pydoc_data.topics; offline.",
    )


@functools.cache
def _packaged_manifest(name: str) -> Manifest:
    text = resources.files("shared_data").joinpath("manifests", f"{name}.json").read_text(encoding="utf-8")
    manifest = Manifest.from_json(text)
    if manifest.name != name:
        raise ManifestError(f"manifests/{name}.json declares name {manifest.name!r}")
    return manifest


_REMOTE = ("climbmix", "tinystories")


def list_manifests() -> list[str]:
    return sorted(("pydoc", *_REMOTE))


def get_manifest(name: str) -> Manifest:
    """The manifest registered under `name` ("climbmix" | "tinystories" | "pydoc")."""
    if name == "pydoc":
        return _pydoc_manifest()
    if name in _REMOTE:
        return _packaged_manifest(name)
    raise UnknownManifestError(f"unknown dataset {name!r}; known: {', '.join(list_manifests())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared_data.manifests", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=list_manifests())
    parser.add_argument("--pin-from", metavar="DATA_DIR", help="fill checksums from that folder's download lock")
    args = parser.parse_args(argv)
    manifest = get_manifest(args.name)
    if args.pin_from:
        from pathlib import Path

        from shared_data.download import read_lock

        lock = read_lock(Path(args.pin_from))
        manifest = manifest.with_checksums({n: (e.size, e.sha256) for n, e in lock.items() if n in
                                            {f.name for f in manifest.files}})
    json.dump(manifest.to_dict(), sys.stdout, indent=2)
    print(f"\n# manifest_id: {manifest.manifest_id}  pinned: {manifest.pinned}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
