"""Downloads against a real HTTP server on 127.0.0.1 serving real parquet files.

Covers: parallel download and the first-download lock, resume after a truncated transfer and of a
`.part` left behind, servers that ignore Range, checksum mismatch (re-downloaded or refused,
never kept), server errors (retried; permanent ones raise DownloadError), and the end-to-end
prepare path for remote manifests (download -> verify -> tokenizer -> holdout split).
"""

import hashlib
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared_data.download import (
    LOCK_FILE,
    PART_SUFFIX,
    ChecksumMismatchError,
    DownloadError,
    download_manifest,
    read_lock,
)
from shared_data.manifests import Manifest, ManifestFile, get_manifest, pydoc_documents
from shared_data.prepare import DataNotReadyError, _load_record, prepare_manifest

FAST = {"backoff_s": 0.01, "timeout_s": 10.0, "progress": False}


def parquet_bytes(texts):
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), sink)
    return sink.getvalue()


class FileServer:
    """A threaded HTTP server with Range support and switches for misbehaving."""

    def __init__(self, files):
        self.files = dict(files)  # name -> bytes
        self.requests = []  # (name, Range header or None)
        self.fail_next = {}  # name -> how many 500s to send first
        self.always_fail = set()
        self.truncate_once = {}  # name -> bytes to send before dropping the connection, once
        self.serve_instead = {}  # name -> bytes served in place of the real ones
        self.ignore_range = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/redirect/"):  # as the hub sends LFS files to its CDN
                    self.send_response(302)
                    self.send_header("Location", f"/data/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with server.lock:
                    server.requests.append((name, self.headers.get("Range")))
                    failing = name in server.always_fail or server.fail_next.get(name, 0) > 0
                    if server.fail_next.get(name, 0) > 0:
                        server.fail_next[name] -= 1
                    truncate_at = server.truncate_once.pop(name, None)
                if failing:
                    self.send_error(500, "induced failure")
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.serve_instead.get(name, server.files[name])
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if truncate_at is not None:
                    payload = payload[:truncate_at]  # promise everything, deliver part, hang up
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def requests_for(self, name):
        return [rng for n, rng in self.requests if n == name]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def texts():
    docs = pydoc_documents()
    return docs["train"], docs["val"]


@pytest.fixture
def files(texts):
    train, val = texts
    half = len(train) // 2
    return {
        "part-0.parquet": parquet_bytes(train[:half]),
        "part-1.parquet": parquet_bytes(train[half:]),
        "val.parquet": parquet_bytes(val),
    }


@pytest.fixture
def server(files):
    srv = FileServer(files)
    yield srv
    srv.close()


def make_manifest(files, pinned, name="testmix", vocab_size=512):
    entries = []
    for file_name, blob in files.items():
        size, sha = (len(blob), hashlib.sha256(blob).hexdigest()) if pinned else (0, "")
        split = "val" if file_name.startswith("val") else "train"
        entries.append(ManifestFile(file_name, f"https://example.invalid/{file_name}", size, sha, split))
    return Manifest(name=name, files=tuple(entries), vocab_size=vocab_size)


def assert_same(dest, files):
    for name, blob in files.items():
        assert (dest / name).read_bytes() == blob
        assert not (dest / (name + PART_SUFFIX)).exists()


def test_parallel_download_records_lock_for_unpinned(tmp_path, server, files, capfd):
    manifest = make_manifest(files, pinned=False)
    paths = download_manifest(manifest, tmp_path, base_url=server.url, workers=3, backoff_s=0.01)
    assert [p.name for p in paths] == list(files)
    assert_same(tmp_path, files)
    lock = read_lock(tmp_path)
    for name, blob in files.items():
        assert lock[name].sha256 == hashlib.sha256(blob).hexdigest()
        assert lock[name].size == len(blob)
        assert lock[name].url == f"{server.url}/{name}"
    assert "download testmix:" in capfd.readouterr().err  # the progress line
    # already complete: verified locally, nothing fetched again
    before = len(server.requests)
    download_manifest(manifest, tmp_path, base_url=server.url, **FAST)
    assert len(server.requests) == before


def test_resume_after_truncated_transfer(tmp_path, server, files):
    name = "part-0.parquet"
    cut = len(files[name]) // 2
    server.truncate_once[name] = cut
    download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, retries=3, **FAST)
    assert_same(tmp_path, files)
    assert server.requests_for(name) == [None, f"bytes={cut}-"]  # the second request resumed


def test_resume_of_part_file_left_behind(tmp_path, server, files):
    name = "val.parquet"
    (tmp_path / (name + PART_SUFFIX)).write_bytes(files[name][:1000])
    download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, **FAST)
    assert_same(tmp_path, files)
    assert server.requests_for(name) == ["bytes=1000-"]


def test_complete_part_file_is_verified_without_refetch(tmp_path, server, files):
    name = "val.parquet"
    (tmp_path / (name + PART_SUFFIX)).write_bytes(files[name])
    download_manifest(make_manifest(files, pinned=False), tmp_path, base_url=server.url, **FAST)
    assert_same(tmp_path, files)
    assert server.requests_for(name) == [f"bytes={len(files[name])}-"]  # answered 416: already whole


def test_resume_survives_a_redirect(tmp_path, server, files):
    name = "part-0.parquet"
    (tmp_path / (name + PART_SUFFIX)).write_bytes(files[name][:500])
    redirecting = server.url.replace("/data", "/redirect")
    download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=redirecting, **FAST)
    assert_same(tmp_path, files)
    assert server.requests_for(name) == ["bytes=500-"]  # the Range header followed the redirect


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, files):
    name = "part-1.parquet"
    (tmp_path / (name + PART_SUFFIX)).write_bytes(b"garbage that must not survive")
    server.ignore_range = True
    download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, **FAST)
    assert_same(tmp_path, files)


def test_corrupted_local_file_is_downloaded_again(tmp_path, server, files):
    manifest = make_manifest(files, pinned=True)
    download_manifest(manifest, tmp_path, base_url=server.url, **FAST)
    victim = tmp_path / "part-0.parquet"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    download_manifest(manifest, tmp_path, base_url=server.url, **FAST)
    assert_same(tmp_path, files)
    assert server.requests_for("part-0.parquet") == [None, None]


def test_checksum_mismatch_from_server_is_refused_and_nothing_kept(tmp_path, server, files):
    name = "val.parquet"
    bad = bytearray(files[name])
    bad[-50] ^= 0xFF  # same size, different bytes
    server.serve_instead[name] = bytes(bad)
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, **FAST)
    assert not (tmp_path / name).exists() and not (tmp_path / (name + PART_SUFFIX)).exists()
    assert server.requests_for(name) == [None, None]  # one fresh retry, then refused
    assert name not in read_lock(tmp_path)
    # the other files were still completed and kept
    assert (tmp_path / "part-0.parquet").read_bytes() == files["part-0.parquet"]


def test_wrong_size_is_refused_before_the_body(tmp_path, server, files):
    name = "val.parquet"
    server.serve_instead[name] = files[name] + b"extra"
    with pytest.raises(ChecksumMismatchError, match="bytes but must be"):
        download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, **FAST)
    assert not (tmp_path / name).exists()


def test_unpinned_lock_catches_changed_bytes_later(tmp_path, server, files):
    manifest = make_manifest(files, pinned=False)
    download_manifest(manifest, tmp_path, base_url=server.url, **FAST)
    name = "part-1.parquet"
    (tmp_path / name).write_bytes(b"locally damaged")
    server.serve_instead[name] = parquet_bytes(["different upstream content"])
    with pytest.raises(ChecksumMismatchError):
        download_manifest(manifest, tmp_path, base_url=server.url, **FAST)
    assert not (tmp_path / name).exists()
    assert read_lock(tmp_path)[name].sha256 == hashlib.sha256(files[name]).hexdigest()  # first record kept


def test_server_error_is_retried(tmp_path, server, files):
    server.fail_next["part-0.parquet"] = 2
    download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, retries=3, **FAST)
    assert_same(tmp_path, files)
    assert len(server.requests_for("part-0.parquet")) == 3


def test_permanent_server_error_raises_download_error(tmp_path, server, files):
    server.always_fail.add("val.parquet")
    with pytest.raises(DownloadError, match="giving up after 3 attempts") as info:
        download_manifest(make_manifest(files, pinned=True), tmp_path, base_url=server.url, retries=2, **FAST)
    assert not isinstance(info.value, ChecksumMismatchError)
    assert len(server.requests_for("val.parquet")) == 3
    assert not (tmp_path / "val.parquet").exists()


def test_not_found_fails_at_once(tmp_path, server, files):
    manifest = make_manifest({**files, "missing.parquet": b"x"}, pinned=False)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_manifest(manifest, tmp_path, base_url=server.url, retries=5, **FAST)
    assert len(server.requests_for("missing.parquet")) == 1


def test_unreachable_server_raises_download_error(tmp_path, files):
    with pytest.raises(DownloadError, match="giving up"):
        download_manifest(make_manifest(files, pinned=True), tmp_path, base_url="http://127.0.0.1:9/none",
                          retries=1, **FAST)


def test_local_only_manifest_needs_a_base_url(tmp_path):
    with pytest.raises(DownloadError, match="materialized locally"):
        download_manifest(get_manifest("pydoc"), tmp_path, **FAST)


def test_real_climbmix_manifest_through_a_mirror(tmp_path, texts):
    """The real manifest's file names (val shard 06542 included) fetched from a local mirror."""
    manifest = get_manifest("climbmix")
    train, _ = texts
    shards = {f.name: parquet_bytes(train[i::11][:5]) for i, f in enumerate(manifest.files)}
    mirror = FileServer(shards)
    try:
        paths = download_manifest(manifest, tmp_path, base_url=mirror.url, workers=4, **FAST)
    finally:
        mirror.close()
    assert paths[-1].name == "shard_06542.parquet"
    assert_same(tmp_path, shards)
    assert set(read_lock(tmp_path)) == set(shards)
    pinned = manifest.with_checksums({n: (e.size, e.sha256) for n, e in read_lock(tmp_path).items()})
    assert pinned.pinned and pinned.manifest_id != manifest.manifest_id


def test_prepare_remote_manifest_end_to_end(tmp_path, server, files):
    manifest = make_manifest(files, pinned=False)
    prepared = prepare_manifest(manifest, tmp_path, base_url=server.url, progress=False, backoff_s=0.01)
    assert [p.name for p in prepared.train_files] == ["part-0.parquet", "part-1.parquet"]
    assert [p.name for p in prepared.val_files] == ["val.parquet"]
    assert prepared.load_tokenizer().vocab_size == 512
    assert (prepared.data_dir / LOCK_FILE).exists()
    fetched = len(server.requests)
    again = prepare_manifest(manifest, tmp_path, base_url=server.url, progress=False)
    assert len(server.requests) == fetched and again.content_id == prepared.content_id
    # damage one file: loading refuses it, preparing again fetches it again and verifies against the lock
    victim = prepared.train_files[1]
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DataNotReadyError, match="fails its checksum"):
        _load_record(manifest, prepared.data_dir.parent)
    repaired = prepare_manifest(manifest, tmp_path, base_url=server.url, progress=False)
    assert repaired.content_id == prepared.content_id
    assert server.requests_for("part-1.parquet") == [None, None]


def test_prepare_holdout_manifest_splits_rows(tmp_path, texts):
    """A single-file dataset (like tinystories): the first rows become the val split."""
    train, val = texts
    rows = val + train
    blob = parquet_bytes(rows)
    srv = FileServer({"stories.parquet": blob})
    try:
        manifest = Manifest(name="stories", vocab_size=512, val_holdout_rows=len(val), files=(
            ManifestFile("stories.parquet", "https://example.invalid/stories.parquet", 0, "", "train"),))
        prepared = prepare_manifest(manifest, tmp_path, base_url=srv.url, progress=False)
    finally:
        srv.close()
    assert pq.read_table(prepared.val_files[0]).column("text").to_pylist() == val
    assert pq.read_table(prepared.train_files[0]).column("text").to_pylist() == train
    too_many = Manifest(name="stories2", vocab_size=512, val_holdout_rows=len(rows), files=manifest.files)
    srv = FileServer({"stories.parquet": blob})
    try:
        from shared_data.prepare import PrepareError

        with pytest.raises(PrepareError, match="too few rows"):
            prepare_manifest(too_many, tmp_path, base_url=srv.url, progress=False)
    finally:
        srv.close()
