"""Download a manifest's files: parallel, resumable, retried with backoff, checksum-verified.

Each file streams into `<name>.part` and is renamed into place only after its size and sha256
check out, so a file under its final name has always been verified. An interrupted transfer
resumes with an HTTP Range request from the end of the `.part` file; a server that ignores Range
(answers 200) restarts the file from zero. Network errors, timeouts, truncated bodies and HTTP
408/425/429/5xx are retried with exponential backoff; other HTTP errors (404, 403, ...) fail at
once with `DownloadError`.

Expected checksums come from the manifest when it is pinned. For an unpinned manifest (the remote
datasets, whose real checksums could not be computed where this code was written, see
`manifests.py`) the first complete download of a file is trusted and its size and sha256 are
recorded in `download-lock.json` in the destination folder; from then on that record is the
expectation, so a file that changes later (corruption, or different bytes served under the same
URL) is detected. (A file already in place with no record, say copied in by hand, is hashed and
recorded the same way.) A file that fails its checksum is deleted and fetched once more from scratch;
if the second copy also differs, `ChecksumMismatchError` is raised and nothing is left under the
final name.

Standard library only (urllib), so the coordinator can import it without the volunteer extras.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from shared_data.cache import atomic_write_json
from shared_data.manifests import Manifest, ManifestFile

LOCK_FILE = "download-lock.json"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 60.0
FRESH_COPIES_ON_MISMATCH = 2  # how many complete copies may fail their checksum before giving up
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "autoswarm-shared-data/1"
PROGRESS_INTERVAL_S = 0.5


class DownloadError(RuntimeError):
    """A file could not be downloaded (permanent HTTP error, or retries exhausted)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file does not have the size or sha256 it must have; it was not kept."""


class _RetryableError(Exception):
    """A transient failure: try again after a backoff."""


@dataclass(frozen=True)
class LockEntry:
    size: int
    sha256: str
    url: str


def read_lock(dest_dir: Path) -> dict[str, LockEntry]:
    """The sizes and checksums recorded for files first downloaded into `dest_dir`."""
    path = Path(dest_dir) / LOCK_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {name: LockEntry(int(e["size"]), str(e["sha256"]), str(e["url"])) for name, e in raw["files"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DownloadError(f"{path} is corrupted ({exc}); delete it to re-record checksums") from exc


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class _Progress:
    """One aggregated progress line on stderr, throttled; silent when disabled."""

    def __init__(self, label: str, total_files: int, total_bytes: int, enabled: bool,
                 stream: TextIO | None = None) -> None:
        self.label = label
        self.total_files = total_files
        self.total_bytes = total_bytes  # 0 while sizes are unknown
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done_bytes = 0
        self.done_files = 0
        self.started = time.monotonic()
        self._last_print = 0.0
        self._lock = threading.Lock()

    def add_total(self, nbytes: int) -> None:
        with self._lock:
            self.total_bytes += nbytes

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self._maybe_print(final=False)

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1
            self._maybe_print(final=self.done_files == self.total_files)

    def _maybe_print(self, final: bool) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last_print < PROGRESS_INTERVAL_S):
            return
        self._last_print = now
        mb = self.done_bytes / 1e6
        rate = mb / max(now - self.started, 1e-6)
        total = f"/{self.total_bytes / 1e6:.1f}" if self.total_bytes else ""
        percent = f" {100 * self.done_bytes / self.total_bytes:5.1f}%" if self.total_bytes else ""
        end = "\n" if final else "\r"
        self.stream.write(f"download {self.label}: {mb:.1f}{total} MB{percent} {rate:.1f} MB/s "
                          f"{self.done_files}/{self.total_files} files{end}")
        self.stream.flush()


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total length or None) from `bytes START-END/TOTAL`."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    if not match:
        raise _RetryableError(f"unusable Content-Range header {value!r}")
    total = None if match.group(2) == "*" else int(match.group(2))
    return int(match.group(1)), total


def _stream_to_part(url: str, part: Path, expected_size: int | None, timeout_s: float,
                    progress: _Progress) -> None:
    """Bring `part` to the full remote file, resuming from its current length. Raises on failure."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the real file: it cannot be a prefix of it
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # complete from an earlier attempt; the caller verifies it
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # the range starts at or past the end: the part is complete, or longer than the file
            match = re.fullmatch(r"bytes \*/(\d+)", (exc.headers.get("Content-Range") or "").strip())
            if match and int(match.group(1)) == offset:
                return
            part.unlink(missing_ok=True)
            raise _RetryableError(f"server refused a resume from byte {offset}; restarting") from exc
        if exc.code in RETRYABLE_HTTP:
            raise _RetryableError(f"HTTP {exc.code} from {url}") from exc
        raise DownloadError(f"HTTP {exc.code} {exc.reason} from {url}") from exc
    with response:
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _RetryableError(f"server resumed at byte {start}, asked for {offset}; restarting")
            mode = "ab"
        elif response.status == 200:
            offset, mode = 0, "wb"  # the server ignored Range (or none was sent): whole file
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        else:
            raise _RetryableError(f"unexpected HTTP {response.status} from {url}")
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{url} is {total} bytes but must be {expected_size}; the server has a different file"
            )
        if offset == 0 and total is not None and expected_size is None:
            progress.add_total(total)
        received = offset
        with open(part, mode) as handle:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
        if total is not None and received != total:
            raise _RetryableError(f"connection closed after {received} of {total} bytes")


def _fetch_one(file: ManifestFile, url: str, dest_dir: Path, expected: tuple[int, str] | None, *,
               retries: int, backoff_s: float, timeout_s: float, progress: _Progress) -> tuple[int, str]:
    """Make `dest_dir/file.name` a verified copy; returns its (size, sha256)."""
    final = dest_dir / file.name
    part = dest_dir / (file.name + PART_SUFFIX)
    if final.exists():
        actual = sha256_file(final)
        if expected is None or actual == expected:
            if expected is None:
                progress.add_total(actual[0])
            progress.advance(actual[0])
            return actual
        print(f"download: {final} fails its checksum (size {actual[0]}, sha256 {actual[1][:12]}); "
              f"downloading it again", file=sys.stderr)
        final.unlink()
    expected_size = expected[0] if expected else None
    failed_attempts = 0
    bad_copies = 0
    while True:
        try:
            _stream_to_part(url, part, expected_size, timeout_s, progress)
            actual = sha256_file(part)
            if expected is not None and actual != expected:
                part.unlink()
                bad_copies += 1
                message = (f"{file.name} from {url}: got size {actual[0]} sha256 {actual[1]}, "
                           f"expected size {expected[0]} sha256 {expected[1]}")
                if bad_copies >= FRESH_COPIES_ON_MISMATCH:
                    raise ChecksumMismatchError(message + "; the file was deleted")
                print(f"download: {message}; fetching a fresh copy", file=sys.stderr)
                continue
            part.replace(final)
            return actual
        except ChecksumMismatchError:
            raise
        except (_RetryableError, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            failed_attempts += 1
            if failed_attempts > retries:
                raise DownloadError(f"{file.name}: giving up after {failed_attempts} attempts; last error: "
                                    f"{exc}") from exc
            delay_s = min(MAX_BACKOFF_S, backoff_s * 2 ** (failed_attempts - 1)) * random.uniform(0.75, 1.25)
            print(f"download: {file.name}: {exc}; retry {failed_attempts}/{retries} in {delay_s:.1f}s",
                  file=sys.stderr)
            time.sleep(delay_s)


def file_url(file: ManifestFile, base_url: str | None) -> str:
    """Where to fetch `file`: `base_url/<name>` for a mirror, else the manifest's own URL."""
    if base_url:
        return f"{base_url.rstrip('/')}/{file.name}"
    if not file.url.startswith(("https://", "http://")):
        raise DownloadError(f"{file.name} has no downloadable URL ({file.url}); it is materialized locally")
    return file.url


def download_manifest(manifest: Manifest, dest_dir: Path, *, base_url: str | None = None, workers: int = 4,
                      retries: int = 5, progress: bool = True, backoff_s: float = 1.0,
                      timeout_s: float = 60.0, files: list[str] | None = None) -> list[Path]:
    """Fetch and verify the manifest's files (or the named subset) into `dest_dir`; paths in manifest order.

    `base_url` replaces the manifest URLs with `<base_url>/<file name>` (a mirror, or a test server).
    Raises `ChecksumMismatchError` or `DownloadError` after every other file has finished, so work
    already done is kept for the next try.
    """
    if workers < 1 or retries < 0:
        raise ValueError("workers must be >= 1 and retries >= 0")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    wanted = [f for f in manifest.files if files is None or f.name in files]
    if files is not None and len(wanted) != len(set(files)):
        raise ValueError(f"manifest {manifest.name} has no files named "
                         f"{sorted(set(files) - {f.name for f in manifest.files})}")
    urls = {f.name: file_url(f, base_url) for f in wanted}  # bad URLs fail before any transfer
    lock = read_lock(dest_dir)
    lock_guard = threading.Lock()

    def expected_for(file: ManifestFile) -> tuple[int, str] | None:
        if file.pinned:
            return file.size, file.sha256
        entry = lock.get(file.name)
        return (entry.size, entry.sha256) if entry else None

    known_bytes = sum(exp[0] for f in wanted if (exp := expected_for(f)))
    meter = _Progress(manifest.name, len(wanted), known_bytes, progress)

    def run(file: ManifestFile) -> Path:
        size, sha = _fetch_one(file, urls[file.name], dest_dir, expected_for(file), retries=retries,
                               backoff_s=backoff_s, timeout_s=timeout_s, progress=meter)
        with lock_guard:
            lock[file.name] = LockEntry(size, sha, urls[file.name])
            atomic_write_json(dest_dir / LOCK_FILE, {
                "manifest": manifest.name,
                "files": {n: {"size": e.size, "sha256": e.sha256, "url": e.url} for n, e in sorted(lock.items())},
            })
        meter.file_done()
        return dest_dir / file.name

    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(wanted))),
                            thread_name_prefix="download") as pool:
        futures = [pool.submit(run, f) for f in wanted]
        errors = [exc for fut in futures if (exc := fut.exception()) is not None]
    if errors:
        if len(errors) > 1:
            print(f"download: {len(errors)} files failed; first error follows", file=sys.stderr)
        raise errors[0]
    return [dest_dir / f.name for f in wanted]
