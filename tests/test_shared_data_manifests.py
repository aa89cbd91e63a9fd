"""Manifests: ids, registry, validation, the pinned climbmix val shard, no torch needed."""

import json
import subprocess
import sys

import pytest

from shared_data.manifests import (
    Manifest,
    ManifestError,
    ManifestFile,
    UnknownManifestError,
    get_manifest,
    list_manifests,
    pydoc_documents,
    pydoc_parquet_bytes,
)


def test_registry():
    assert list_manifests() == ["climbmix", "pydoc", "tinystories"]
    for name in list_manifests():
        assert get_manifest(name).name == name
    with pytest.raises(UnknownManifestError, match="known: climbmix, pydoc, tinystories"):
        get_manifest("fineweb")
    assert issubclass(UnknownManifestError, ValueError)


def test_climbmix_pins_upstream_val_shard():
    manifest = get_manifest("climbmix")
    (val,) = manifest.split_files("val")
    assert val.name == "shard_06542.parquet"
    assert val.url == ("https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/"
                       "shard_06542.parquet")
    assert [f.name for f in manifest.split_files("train")] == [f"shard_{i:05d}.parquet" for i in range(10)]
    assert manifest.vocab_size == 8192 and manifest.text_column == "text"
    assert not manifest.pinned  # real checksums are recorded on first download


def test_tinystories_holds_out_rows():
    manifest = get_manifest("tinystories")
    (train,) = manifest.files
    assert train.url.startswith("https://huggingface.co/datasets/karpathy/tinystories-gpt4-clean/")
    assert manifest.val_holdout_rows > 0 and not manifest.split_files("val")


def test_pydoc_is_pinned_and_deterministic():
    manifest = get_manifest("pydoc")
    assert manifest.pinned and manifest.vocab_size == 1024
    docs = pydoc_documents()
    assert docs == pydoc_documents()
    assert not set(docs["train"]) & set(docs["val"])
    total_chars = sum(map(len, docs["train"])) + sum(map(len, docs["val"]))
    assert 400_000 < total_chars < 600_000
    assert 0.08 < len(docs["val"]) / (len(docs["train"]) + len(docs["val"])) < 0.2
    for file in manifest.files:
        assert file.size == len(pydoc_parquet_bytes()[file.name])


def test_id_is_stable_and_covers_what_matters():
    manifest = get_manifest("climbmix")
    assert Manifest.from_json(json.dumps(manifest.to_dict())).manifest_id == manifest.manifest_id
    assert len(manifest.manifest_id) == 64
    from dataclasses import replace

    assert replace(manifest, description="other words").manifest_id == manifest.manifest_id
    assert replace(manifest, vocab_size=4096).manifest_id != manifest.manifest_id
    pinned = manifest.with_checksums({"shard_06542.parquet": (123, "a" * 64)})
    assert pinned.manifest_id != manifest.manifest_id
    assert pinned.split_files("val")[0].pinned and not pinned.pinned


@pytest.mark.parametrize("bad", [
    lambda: ManifestFile("../escape.parquet", "http://x", 0, "", "train"),
    lambda: ManifestFile("a.parquet", "http://x", 0, "", "test"),
    lambda: ManifestFile("a.parquet", "http://x", -1, "", "train"),
    lambda: ManifestFile("a.parquet", "http://x", 1, "XYZ", "train"),
    lambda: Manifest("m", (ManifestFile("a", "u", 0, "", "val"),), 1024),
    lambda: Manifest("m", (ManifestFile("a", "u", 0, "", "train"),), 1024),
    lambda: Manifest("m", (ManifestFile("a", "u", 0, "", "train"), ManifestFile("a", "u", 0, "", "val")), 1024),
    lambda: Manifest("m", (ManifestFile("a", "u", 0, "", "train"), ManifestFile("b", "u", 0, "", "val")), 100),
    lambda: Manifest("m", (ManifestFile("a", "u", 0, "", "train"), ManifestFile("b", "u", 0, "", "val")), 1024,
                     val_holdout_rows=10),
    lambda: Manifest.from_json("{}"),
    lambda: Manifest.from_json("not json"),
    lambda: Manifest.from_dict({**get_manifest("climbmix").to_dict(), "schema": 99}),
])
def test_malformed_manifests_are_refused(bad):
    with pytest.raises(ManifestError):
        bad()


def test_importable_without_torch():
    code = ("import sys; import shared_data.manifests, shared_data.download, shared_data.cache; "
            "from shared_data.manifests import get_manifest; get_manifest('pydoc'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_cli_prints_manifest(tmp_path):
    result = subprocess.run([sys.executable, "-m", "shared_data.manifests", "climbmix"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert Manifest.from_json(result.stdout).manifest_id == get_manifest("climbmix").manifest_id
    assert "pinned: False" in result.stderr
