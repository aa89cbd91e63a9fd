"""prepare / load_prepared for pydoc: fast, idempotent, offline, and refusing anything altered."""

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from shared_data.cache import CACHE_ENV, default_cache_dir
from shared_data.manifests import get_manifest
from shared_data.prepare import (
    RECORD_FILE,
    DataNotReadyError,
    load_prepared,
    prepare,
    verify_prepared,
)
from shared_data.tokenizer import RANKS_FILE


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Nothing in these tests may touch the user's real cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))


def flip_byte(path, offset_from_end=200):
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_default_cache_dir_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "autoswarm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir().parts[-2:] == (".cache", "autoswarm")


def test_prepare_is_fast_complete_and_idempotent(tmp_path):
    started = time.perf_counter()
    prepared = prepare("pydoc", tmp_path, progress=False)
    first_s = time.perf_counter() - started
    assert first_s < 2.0, f"pydoc prepare took {first_s:.2f}s"
    manifest = get_manifest("pydoc")
    assert prepared.manifest_id == manifest.manifest_id
    assert prepared.data_dir.parent.name == f"pydoc-{manifest.manifest_id[:16]}"
    assert [p.name for p in prepared.train_files] == ["pydoc-train.parquet"]
    assert [p.name for p in prepared.val_files] == ["pydoc-val.parquet"]
    tokenizer = prepared.load_tokenizer()
    assert tokenizer.vocab_size == manifest.vocab_size == 1024
    assert tokenizer.content_hash == prepared.tokenizer_hash
    train_rows = pq.read_table(prepared.train_files[0]).num_rows
    val_rows = pq.read_table(prepared.val_files[0]).num_rows
    assert train_rows > 5 * val_rows > 0

    record_mtime = (prepared.data_dir.parent / RECORD_FILE).stat().st_mtime_ns
    started = time.perf_counter()
    again = prepare("pydoc", tmp_path, progress=False)
    assert time.perf_counter() - started < first_s + 0.5
    assert (prepared.data_dir.parent / RECORD_FILE).stat().st_mtime_ns == record_mtime  # nothing rebuilt
    assert again.content_id == prepared.content_id
    assert load_prepared("pydoc", tmp_path).content_id == prepared.content_id


def test_same_corpus_gives_same_ids_in_another_cache(tmp_path):
    a = prepare("pydoc", tmp_path / "a", progress=False)
    b = prepare("pydoc", tmp_path / "b", progress=False)
    assert (a.manifest_id, a.tokenizer_hash, a.content_id) == (b.manifest_id, b.tokenizer_hash, b.content_id)


def test_env_var_sets_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "via-env"))
    prepared = prepare("pydoc", progress=False)
    assert prepared.data_dir.is_relative_to(tmp_path / "via-env")


def test_load_before_prepare_says_what_to_run(tmp_path):
    with pytest.raises(DataNotReadyError, match="python -m shared_data.prepare --dataset pydoc"):
        load_prepared("pydoc", tmp_path)
    assert not any(tmp_path.iterdir())  # loading never creates or downloads anything
    assert verify_prepared("pydoc", tmp_path)


@pytest.mark.parametrize("split", ["train", "val"])
def test_corrupted_data_file_is_refused_then_repaired(tmp_path, split):
    prepared = prepare("pydoc", tmp_path, progress=False)
    victim = (prepared.train_files if split == "train" else prepared.val_files)[0]
    size_before = victim.stat().st_size
    flip_byte(victim)
    assert victim.stat().st_size == size_before  # same size: only the checksum can tell
    with pytest.raises(DataNotReadyError, match="fails its checksum"):
        load_prepared("pydoc", tmp_path)
    assert "fails its checksum" in verify_prepared("pydoc", tmp_path)[0]
    repaired = prepare("pydoc", tmp_path, progress=False)  # re-materializes the bad file
    assert repaired.content_id == prepared.content_id
    assert verify_prepared("pydoc", tmp_path) == []


def test_missing_data_file_is_refused(tmp_path):
    prepared = prepare("pydoc", tmp_path, progress=False)
    prepared.val_files[0].unlink()
    with pytest.raises(DataNotReadyError, match="missing"):
        load_prepared("pydoc", tmp_path)


def test_changed_tokenizer_is_refused(tmp_path):
    prepared = prepare("pydoc", tmp_path, progress=False)
    ranks = prepared.tokenizer_dir / RANKS_FILE
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join(lines[:-1]) + "\n")  # drop the last merge
    with pytest.raises(DataNotReadyError, match="tokenizer"):
        load_prepared("pydoc", tmp_path)


def test_tampered_record_is_refused(tmp_path):
    prepared = prepare("pydoc", tmp_path, progress=False)
    record_path = prepared.data_dir.parent / RECORD_FILE
    record = json.loads(record_path.read_text())
    record["tokenizer_hash"] = "0" * 64
    record_path.write_text(json.dumps(record))
    with pytest.raises(DataNotReadyError, match="differs from the recorded"):
        load_prepared("pydoc", tmp_path)
    record_path.write_text("{not json")
    with pytest.raises(DataNotReadyError, match="unreadable"):
        load_prepared("pydoc", tmp_path)


def test_pinned_ids_from_a_coordinator_are_enforced(tmp_path):
    prepared = prepare("pydoc", tmp_path, progress=False)
    assert load_prepared("pydoc", tmp_path, expected_manifest_id=prepared.manifest_id,
                         expected_tokenizer_hash=prepared.tokenizer_hash).content_id == prepared.content_id
    with pytest.raises(DataNotReadyError, match="coordinator pins pydoc manifest"):
        load_prepared("pydoc", tmp_path, expected_manifest_id="f" * 64)
    with pytest.raises(DataNotReadyError, match="coordinator pins tokenizer"):
        load_prepared("pydoc", tmp_path, expected_tokenizer_hash="f" * 64)


def test_cli_prepares_and_verifies(tmp_path):
    cmd = [sys.executable, "-m", "shared_data.prepare", "--dataset", "pydoc", "--cache-dir", str(tmp_path)]
    verify = subprocess.run([*cmd, "--verify"], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 1 and "not prepared" in verify.stderr
    done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    assert lines["manifest_id"].strip() == get_manifest("pydoc").manifest_id
    assert lines["vocab_size"].strip() == "1024"
    verify = subprocess.run([*cmd, "--verify"], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "tokenizer_hash" in verify.stdout


def test_concurrent_prepares_agree(tmp_path):
    code = ("import sys; from shared_data.prepare import prepare; "
            "print(prepare('pydoc', sys.argv[1], progress=False).content_id)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    ids = {out.strip() for out, _ in outputs}
    assert ids == {load_prepared("pydoc", tmp_path).content_id}
