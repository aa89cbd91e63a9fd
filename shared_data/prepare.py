"""Prepare a dataset once (fetch or materialize, verify, train the tokenizer); load it offline.

Layout under the cache root (see `cache.py`), one folder per manifest:

    <cache>/<name>-<manifest id[:16]>/
        data/            the manifest's files (+ download-lock.json, + holdout split files)
        tokenizer/       tokenizer.tiktoken + tokenizer.json
        prepared.json    the record: manifest id, every file the dataloader reads with its
                         size and sha256, the tokenizer's content hash

`prepare` is idempotent: when the record exists and everything matches it, it returns at once.
`load_prepared` never downloads or trains: it re-hashes every data file and the tokenizer
against the record and raises `DataNotReadyError` (saying what to run) when anything is missing
or differs, so a run never trains or evaluates on data other than what was verified.
Concurrent `prepare` calls on one cache folder take turns (an advisory file lock on POSIX); all
files are written to a temporary name and renamed into place, so readers never see torn files.

    python -m shared_data.prepare --dataset pydoc
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared_data.cache import atomic_write_bytes, atomic_write_json, dataset_dir, resolve_cache_dir
from shared_data.download import download_manifest, read_lock, sha256_file
from shared_data.manifests import Manifest, get_manifest, list_manifests, pydoc_parquet_bytes
from shared_data.tokenizer import Tokenizer, TokenizerError, train_tokenizer

RECORD_FILE = "prepared.json"
LOCK_FILE = ".prepare.lock"
RECORD_FORMAT = 1
HOLDOUT_FILES = {"train": "holdout-train.parquet", "val": "holdout-val.parquet"}
HOLDOUT_ROW_GROUP = 1024  # rows per row group in the derived split files


class DataNotReadyError(RuntimeError):
    """Prepared data is missing, incomplete, or fails its checksums."""


class PrepareError(RuntimeError):
    """The fetched data cannot be prepared (wrong columns, too few rows, ...)."""


@dataclass
class PreparedData:
    manifest: Manifest
    data_dir: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_dir: Path
    tokenizer_hash: str
    file_sha256: dict[str, str] = field(default_factory=dict)  # data_dir-relative name -> sha256

    @property
    def manifest_id(self) -> str:
        return self.manifest.manifest_id

    @property
    def content_id(self) -> str:
        """sha256 over the verified bytes the dataloader reads and the tokenizer: equal across
        nodes exactly when they train and evaluate on the same tokens (meaningful for unpinned
        manifests, whose id cannot cover checksums)."""
        body = json.dumps({"files": self.file_sha256, "tokenizer": self.tokenizer_hash}, sort_keys=True)
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    def load_tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.load(self.tokenizer_dir)
        if tokenizer.content_hash != self.tokenizer_hash:
            raise DataNotReadyError(f"tokenizer in {self.tokenizer_dir} changed since it was verified")
        return tokenizer


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(f"prepare: {message}", file=sys.stderr, flush=True)


def _root(manifest: Manifest, cache_dir: Path | str | None) -> Path:
    return dataset_dir(resolve_cache_dir(cache_dir), manifest.name, manifest.manifest_id)


def _how_to_prepare(name: str) -> str:
    return f"run `python -m shared_data.prepare --dataset {name}` (with the same cache dir) while online"


# ---------------------------------------------------------------------------
# Loading and verification (offline)
# ---------------------------------------------------------------------------

def _load_record(manifest: Manifest, root: Path) -> PreparedData:
    record_path = root / RECORD_FILE
    name = manifest.name
    if not record_path.exists():
        raise DataNotReadyError(f"dataset {name!r} is not prepared in {root}: {_how_to_prepare(name)}")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("format") != RECORD_FORMAT:
            raise ValueError(f"record format {record.get('format')}")
        files = {rel: (int(e["size"]), str(e["sha256"]), str(e["split"])) for rel, e in record["files"].items()}
        tokenizer_hash = str(record["tokenizer_hash"])
        recorded_id = str(record["manifest_id"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataNotReadyError(f"{record_path} is unreadable ({exc}): {_how_to_prepare(name)}") from exc
    if recorded_id != manifest.manifest_id:
        raise DataNotReadyError(f"{root} was prepared from manifest {recorded_id[:16]}, not "
                                f"{manifest.manifest_id[:16]}: {_how_to_prepare(name)}")
    data_dir = root / "data"
    split_files: dict[str, list[Path]] = {"train": [], "val": []}
    for rel, (size, sha, split) in files.items():
        path = data_dir / rel
        if not path.is_file():
            raise DataNotReadyError(f"{name}: data file {path} is missing: {_how_to_prepare(name)}")
        actual_size, actual_sha = sha256_file(path)
        if (actual_size, actual_sha) != (size, sha):
            raise DataNotReadyError(
                f"{name}: data file {path} fails its checksum (size {actual_size} vs {size}, sha256 "
                f"{actual_sha[:12]} vs {sha[:12]}); it is corrupted or was changed: {_how_to_prepare(name)}"
            )
        split_files[split].append(path)
    if not split_files["train"] or not split_files["val"]:
        raise DataNotReadyError(f"{record_path} lacks train or val files: {_how_to_prepare(name)}")
    tokenizer_dir = root / "tokenizer"
    try:
        tokenizer = Tokenizer.load(tokenizer_dir)
    except TokenizerError as exc:
        raise DataNotReadyError(f"{name}: {exc}: {_how_to_prepare(name)}") from exc
    if tokenizer.content_hash != tokenizer_hash:
        raise DataNotReadyError(f"{name}: tokenizer hash {tokenizer.content_hash[:12]} differs from the "
                                f"recorded {tokenizer_hash[:12]}: {_how_to_prepare(name)}")
    return PreparedData(
        manifest=manifest, data_dir=data_dir, train_files=split_files["train"], val_files=split_files["val"],
        tokenizer_dir=tokenizer_dir, tokenizer_hash=tokenizer_hash,
        file_sha256={rel: sha for rel, (_, sha, _) in sorted(files.items())},
    )


def load_prepared(name: str, cache_dir: Path | None = None, *, expected_manifest_id: str | None = None,
                  expected_tokenizer_hash: str | None = None) -> PreparedData:
    """The verified prepared dataset; never downloads. `DataNotReadyError` says what is wrong.

    `expected_*` are what a coordinator pinned; a mismatch is refused in plain words.
    """
    manifest = get_manifest(name)
    if expected_manifest_id is not None and expected_manifest_id != manifest.manifest_id:
        raise DataNotReadyError(
            f"the coordinator pins {name} manifest {expected_manifest_id[:16]} but this node's is "
            f"{manifest.manifest_id[:16]} (different Python for pydoc, or a different autoswarm version)"
        )
    prepared = _load_record(manifest, _root(manifest, cache_dir))
    if expected_tokenizer_hash is not None and expected_tokenizer_hash != prepared.tokenizer_hash:
        raise DataNotReadyError(f"the coordinator pins tokenizer {expected_tokenizer_hash[:12]} but this "
                                f"node's {name} tokenizer is {prepared.tokenizer_hash[:12]}")
    return prepared


def verify_prepared(name: str, cache_dir: Path | None = None) -> list[str]:
    """Problems with the prepared dataset, in plain words; empty when it is ready."""
    try:
        load_prepared(name, cache_dir)
    except DataNotReadyError as exc:
        return [str(exc)]
    return []


# ---------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------

def _materialize_pydoc(manifest: Manifest, data_dir: Path) -> None:
    blobs = pydoc_parquet_bytes()
    for file in manifest.files:
        blob = blobs[file.name]
        if hashlib.sha256(blob).hexdigest() != file.sha256:  # cannot happen unless the module changed
            raise PrepareError(f"pydoc bytes for {file.name} do not match the manifest")
        path = data_dir / file.name
        if not path.exists() or sha256_file(path) != (file.size, file.sha256):
            atomic_write_bytes(path, blob)


def _split_holdout(manifest: Manifest, source: Path, data_dir: Path) -> dict[str, Path]:
    """Write the first `val_holdout_rows` rows as the val file and the rest as the train file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = manifest.text_column
    schema = pa.schema([(column, pa.string())])
    paths = {split: data_dir / name for split, name in HOLDOUT_FILES.items()}
    tmp_paths = {split: path.with_name(path.name + ".tmp") for split, path in paths.items()}
    parquet = pq.ParquetFile(source)
    if column not in parquet.schema_arrow.names:
        raise PrepareError(f"{source} has no column {column!r} (columns: {parquet.schema_arrow.names})")
    writers = {split: pq.ParquetWriter(tmp_paths[split], schema, compression="zstd") for split in paths}
    val_left = manifest.val_holdout_rows
    train_rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=HOLDOUT_ROW_GROUP, columns=[column]):
            texts = batch.column(0).cast(pa.string())
            take_val = min(val_left, len(texts))
            if take_val:
                writers["val"].write_table(pa.Table.from_arrays([texts.slice(0, take_val)], schema=schema))
                val_left -= take_val
            if take_val < len(texts):
                rest = texts.slice(take_val)
                writers["train"].write_table(pa.Table.from_arrays([rest], schema=schema))
                train_rows += len(rest)
    finally:
        for writer in writers.values():
            writer.close()
    if val_left or not train_rows:
        for tmp in tmp_paths.values():
            tmp.unlink(missing_ok=True)
        raise PrepareError(f"{source} has too few rows to hold out {manifest.val_holdout_rows} for validation")
    for split in paths:
        tmp_paths[split].replace(paths[split])
    return paths


def _tokenizer_texts(manifest: Manifest, train_files: list[Path]) -> Iterator[str]:
    import pyarrow.parquet as pq

    chars = 0
    for path in train_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=[manifest.text_column]):
            for text in batch.column(0).to_pylist():
                document = text[: manifest.tokenizer_doc_chars]
                chars += len(document)
                yield document
                if chars >= manifest.tokenizer_max_chars:
                    return


def prepare_manifest(manifest: Manifest, cache_dir: Path | str | None = None, *, base_url: str | None = None,
                     progress: bool = True, workers: int = 4, retries: int = 5,
                     backoff_s: float = 1.0) -> PreparedData:
    """`prepare` for an explicit manifest (tests and mirrors use it with their own manifests)."""
    root = _root(manifest, cache_dir)
    try:
        return _load_record(manifest, root)
    except DataNotReadyError:
        pass  # (re)build below; whatever is still valid on disk is reused
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / LOCK_FILE):
        try:  # another process may have finished while we waited for the lock
            return _load_record(manifest, root)
        except DataNotReadyError:
            return _build(manifest, root, base_url=base_url, progress=progress, workers=workers, retries=retries,
                          backoff_s=backoff_s)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialize preparation of one dataset folder across processes (POSIX advisory lock; elsewhere
    a no-op, and concurrent prepares stay safe only through atomic renames)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(manifest: Manifest, root: Path, *, base_url: str | None, progress: bool, workers: int, retries: int,
           backoff_s: float) -> PreparedData:
    started = time.perf_counter()
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    local = all(f.url.startswith("pydoc://") for f in manifest.files)
    if local and base_url is None:
        _log(progress, f"{manifest.name}: materializing {len(manifest.files)} files from pydoc_data")
        _materialize_pydoc(manifest, data_dir)
    else:
        _log(progress, f"{manifest.name}: fetching {len(manifest.files)} files into {data_dir}")
        download_manifest(manifest, data_dir, base_url=base_url, workers=workers, retries=retries,
                          progress=progress, backoff_s=backoff_s)
        if not manifest.pinned:
            lock = read_lock(data_dir)
            _log(progress, f"{manifest.name}: unpinned manifest; checksums recorded on first download in "
                           f"{data_dir / 'download-lock.json'} ({len(lock)} files)")
    if manifest.val_holdout_rows:
        (source,) = manifest.split_files("train")
        _log(progress, f"{manifest.name}: holding out the first {manifest.val_holdout_rows} rows for val")
        split_paths = _split_holdout(manifest, data_dir / source.name, data_dir)
        train_files, val_files = [split_paths["train"]], [split_paths["val"]]
    else:
        train_files = [data_dir / f.name for f in manifest.split_files("train")]
        val_files = [data_dir / f.name for f in manifest.split_files("val")]

    tokenizer_dir = root / "tokenizer"
    try:
        tokenizer = Tokenizer.load(tokenizer_dir)
        if tokenizer.vocab_size != manifest.vocab_size:
            raise TokenizerError("vocab size differs from the manifest")
        _log(progress, f"{manifest.name}: reusing tokenizer {tokenizer.content_hash[:12]}")
    except TokenizerError:
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(_tokenizer_texts(manifest, train_files), manifest.vocab_size)
        tokenizer.save(tokenizer_dir)
        _log(progress, f"{manifest.name}: trained tokenizer vocab {tokenizer.vocab_size} in "
                       f"{time.perf_counter() - t0:.2f}s, hash {tokenizer.content_hash[:12]}")

    files = {}
    for split, paths in (("train", train_files), ("val", val_files)):
        for path in paths:
            size, sha = sha256_file(path)
            files[path.relative_to(data_dir).as_posix()] = {"size": size, "sha256": sha, "split": split}
    atomic_write_json(root / RECORD_FILE, {
        "format": RECORD_FORMAT,
        "manifest_id": manifest.manifest_id,
        "manifest": manifest.to_dict(),
        "files": files,
        "tokenizer_hash": tokenizer.content_hash,
        "vocab_size": tokenizer.vocab_size,
    })
    prepared = _load_record(manifest, root)
    _log(progress, f"{manifest.name}: ready in {time.perf_counter() - started:.2f}s at {root}")
    return prepared


def prepare(name: str, cache_dir: Path | None = None, *, base_url: str | None = None,
            progress: bool = True) -> PreparedData:
    """Fetch or materialize, verify, and train the tokenizer once; fast when already done."""
    return prepare_manifest(get_manifest(name), cache_dir, base_url=base_url, progress=progress)


def summary_lines(prepared: PreparedData) -> list[str]:
    return [
        "---",
        f"dataset:          {prepared.manifest.name}",
        f"manifest_id:      {prepared.manifest_id}",
        f"pinned:           {str(prepared.manifest.pinned).lower()}",
        f"content_id:       {prepared.content_id}",
        f"tokenizer_hash:   {prepared.tokenizer_hash}",
        f"vocab_size:       {prepared.manifest.vocab_size}",
        f"train_files:      {len(prepared.train_files)}",
        f"val_files:        {len(prepared.val_files)}",
        f"data_dir:         {prepared.data_dir}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared_data.prepare",
                                     description="Prepare a dataset and its tokenizer in the cache.")
    parser.add_argument("--dataset", required=True, choices=list_manifests())
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $AUTOSWARM_CACHE_DIR or ~/.cache/autoswarm")
    parser.add_argument("--base-url", default=None, help="fetch files from <base-url>/<file name> (a mirror)")
    parser.add_argument("--verify", action="store_true", help="only check what is prepared; never download")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            prepared = load_prepared(args.dataset, args.cache_dir)
        else:
            prepared = prepare(args.dataset, args.cache_dir, base_url=args.base_url, progress=not args.quiet)
    except (DataNotReadyError, PrepareError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # download errors and the like: one clear line, non-zero exit
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(prepared)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
