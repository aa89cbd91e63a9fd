"""Operator tasks on a coordinator's state: backup, restore, SQLite -> Redis migration, the mirror
of the global branch, and the health probe the container image runs.

A backup is one tar.gz archive (mode 0600: it holds the signing key and the admin token):

    manifest.json   format, source store kind, branch name, head, public key, record counts and
                    the sha256 of every other member
    state.sqlite    SQLite source: a copy made with SQLite's online backup API (consistent while
                    the coordinator serves)
    store.jsonl     Redis source: every record, read by one server-side script (consistent), one
                    JSON object a line, then an `end` line with the counts (a cut file is refused)
    branch.bundle   the global branch as a git bundle
    signing/...     current.pem, and rotation.json + previous-*.pem during a key rotation
    admin.token     the operator's admin token

The store is read before the branch, so the branch is never behind the store: a merge landing
between the two reads is in the bundle but not in the store, and the coordinator's start-up
reconcile() records it again from the branch (it reconciles in that direction only).

A restore writes into an empty data dir and an empty store (of either kind: a SQLite backup
restores into Redis too), then reads everything back and compares it with the archive before it
reports success. A migration exports one store and imports it into another the same way; stop
the coordinator first (the migration refuses a source that changed while it ran).
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coordinator.branch import BranchError, GlobalBranch
from coordinator.store.base import Store, StoreSnapshot, open_store, record_from_row, to_json
from coordinator.store.errors import StoreError
from coordinator.store.types import (
    ClassStats,
    Hypothesis,
    Invite,
    Lease,
    MergeRecord,
    Principal,
    ResultRecord,
    WorkUnit,
)

log = logging.getLogger("autoswarm.ops")

# ---------------------------------------------------------------------------------------------
# Layout. These names are shared with coordinator/server.py (data dir) and fixed by the archive
# format; a new format gets a new ARCHIVE_FORMAT and restore keeps reading the old ones.
# ---------------------------------------------------------------------------------------------

ARCHIVE_FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_DUMP = "state.sqlite"
RECORDS_DUMP = "store.jsonl"
BRANCH_BUNDLE = "branch.bundle"
SIGNING_DIR = "signing"
ADMIN_TOKEN = "admin.token"
BRANCH_DIR = "branch.git"
DEFAULT_BRANCH = "global"
SNAPSHOT_FORMAT = 1
MIRROR_RETRY_S = 30.0  # first retry after a failed mirror push; doubles up to MIRROR_MAX_RETRY_S
MIRROR_MAX_RETRY_S = 600.0
HEALTH_TIMEOUT_S = 5.0

# Snapshot kinds in file order, with their record types (meta is written as key/value lines).
_RECORD_KINDS: dict[str, type] = {
    "principals": Principal,
    "invites": Invite,
    "hypotheses": Hypothesis,
    "units": WorkUnit,
    "leases": Lease,
    "results": ResultRecord,
    "class_stats": ClassStats,
    "merges": MergeRecord,
}


class OpsError(Exception):
    """An operator task was refused (or failed) and the target was left as it was."""


class StoreDump(enum.StrEnum):
    SQLITE_FILE = "sqlite-file"  # state.sqlite, SQLite's online backup
    RECORDS = "records"  # store.jsonl, the store-independent export


@dataclass(frozen=True)
class BackupManifest:
    format: int
    created_s: float
    store_dump: StoreDump
    branch: str
    head: str
    public_key: str
    counts: dict[str, int]
    files: dict[str, str] = field(default_factory=dict)  # member name -> sha256 hex

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackupManifest:
        try:
            data = json.loads(text)
            if data.get("format") != ARCHIVE_FORMAT:
                raise OpsError(f"archive format {data.get('format')!r} is not {ARCHIVE_FORMAT}")
            return cls(
                format=int(data["format"]),
                created_s=float(data["created_s"]),
                store_dump=StoreDump(data["store_dump"]),
                branch=str(data["branch"]),
                head=str(data["head"]),
                public_key=str(data["public_key"]),
                counts={str(k): int(v) for k, v in data["counts"].items()},
                files={str(k): str(v) for k, v in data["files"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OpsError(f"unreadable backup manifest: {exc}") from None


@dataclass(frozen=True)
class TransferReport:
    """What a restore or migration wrote and verified."""

    counts: dict[str, int]
    head: str = ""
    public_key: str = ""


def default_store_url(data_dir: Path, store_url: str = "") -> str:
    """The store the coordinator uses for this data dir (the server's default: SQLite inside it)."""
    return store_url or f"sqlite:///{Path(data_dir) / 'state.sqlite'}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------
# Snapshot files (store.jsonl)
# ---------------------------------------------------------------------------------------------


def write_snapshot(snapshot: StoreSnapshot, path: Path) -> None:
    """One JSON object a line: a header, `meta` lines, one line per record, an `end` line."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"kind": "header", "format": SNAPSHOT_FORMAT, "counts": snapshot.counts()}) + "\n")
        for key, value in snapshot.meta.items():
            out.write(json.dumps({"kind": "meta", "key": key, "value": value}) + "\n")
        for kind in _RECORD_KINDS:
            for record in getattr(snapshot, kind):
                out.write(f'{{"kind": {json.dumps(kind)}, "record": {to_json(record)}}}\n')
        out.write(json.dumps({"kind": "end", "counts": snapshot.counts()}) + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_snapshot(path: Path) -> StoreSnapshot:
    """Parse a store.jsonl file; OpsError when it is malformed, of another format or cut short."""
    meta: dict[str, str] = {}
    records: dict[str, list[object]] = {kind: [] for kind in _RECORD_KINDS}
    header: dict[str, object] | None = None
    end: dict[str, object] | None = None
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                kind = entry["kind"]
                if end is not None:
                    raise OpsError("records after the end line")
                if header is None:
                    if kind != "header" or entry.get("format") != SNAPSHOT_FORMAT:
                        raise OpsError(f"not a format-{SNAPSHOT_FORMAT} autoswarm store snapshot")
                    header = entry
                elif kind == "meta":
                    meta[str(entry["key"])] = str(entry["value"])
                elif kind == "end":
                    end = entry
                else:
                    records[kind].append(record_from_row(_RECORD_KINDS[kind], entry["record"]))
            except OpsError as exc:
                raise OpsError(f"{path}:{number}: {exc}") from None
            except (ValueError, KeyError, TypeError) as exc:
                raise OpsError(f"{path}:{number}: unreadable snapshot line ({exc!r:.200})") from None
    if end is None:
        raise OpsError(f"{path} is cut short: no end line")
    snapshot = StoreSnapshot(meta=meta, **{kind: tuple(items) for kind, items in records.items()})  # type: ignore[arg-type]
    if end.get("counts") != snapshot.counts():
        raise OpsError(f"{path}: counts {snapshot.counts()} differ from the end line's {end.get('counts')}")
    return snapshot


# ---------------------------------------------------------------------------------------------
# Backup
# ---------------------------------------------------------------------------------------------


def _sqlite_path(store_url: str) -> Path | None:
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return Path(store_url.removeprefix("sqlite:///").removeprefix("sqlite://"))


def _dump_store(store_url: str, staging: Path) -> tuple[StoreDump, dict[str, int]]:
    sqlite_path = _sqlite_path(store_url)
    if sqlite_path is not None:
        if not sqlite_path.is_file():
            raise OpsError(f"no SQLite store at {sqlite_path}")
        # The online backup API copies every page in one step under a read lock: a consistent
        # snapshot, while the coordinator's writers wait at most that long.
        source = sqlite3.connect(sqlite_path, timeout=60.0)
        target = sqlite3.connect(staging / SQLITE_DUMP)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file in the archive
        finally:
            target.close()
            source.close()
        with tempfile.TemporaryDirectory() as scratch:  # reading it may leave -wal/-shm files
            copy = open_store(f"sqlite:///{shutil.copy(staging / SQLITE_DUMP, scratch)}")
            try:
                counts = copy.export_snapshot().counts()
            finally:
                copy.close()
        return StoreDump.SQLITE_FILE, counts
    store = open_store(store_url)
    try:
        snapshot = store.export_snapshot()
    finally:
        store.close()
    write_snapshot(snapshot, staging / RECORDS_DUMP)
    return StoreDump.RECORDS, snapshot.counts()


def backup(data_dir: Path, archive: Path, store_url: str = "", branch_name: str = DEFAULT_BRANCH) -> BackupManifest:
    """Write one archive of the store, the branch and the keys of the coordinator at data_dir.
    Safe while it serves. The archive appears only once complete (mode 0600)."""
    data_dir = Path(data_dir)
    archive = Path(archive)
    key_dir = data_dir / SIGNING_DIR
    if not (key_dir / "current.pem").is_file():
        raise OpsError(f"{data_dir} has no signing key ({key_dir / 'current.pem'}): is it a coordinator data dir?")
    if not (data_dir / BRANCH_DIR).is_dir():
        raise OpsError(f"{data_dir} has no global branch ({data_dir / BRANCH_DIR})")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".autoswarm-backup-", dir=archive.parent) as tmp:
        staging = Path(tmp)
        store_dump, counts = _dump_store(default_store_url(data_dir, store_url), staging)
        branch = GlobalBranch(data_dir / BRANCH_DIR, branch_name)  # read only: no initial commit
        head = branch.head()
        branch.bundle(staging / BRANCH_BUNDLE)
        (staging / SIGNING_DIR).mkdir(mode=0o700)
        for key_file in sorted(key_dir.iterdir()):
            if key_file.is_file() and (key_file.suffix == ".pem" or key_file.name == "rotation.json"):
                shutil.copyfile(key_file, staging / SIGNING_DIR / key_file.name)
        if (data_dir / ADMIN_TOKEN).is_file():
            shutil.copyfile(data_dir / ADMIN_TOKEN, staging / ADMIN_TOKEN)
        from coordinator.service.signing import SigningKeys

        public_key = SigningKeys(staging / SIGNING_DIR).public_key.hex()
        members = [SQLITE_DUMP if store_dump == StoreDump.SQLITE_FILE else RECORDS_DUMP, BRANCH_BUNDLE]
        members += [f"{SIGNING_DIR}/{p.name}" for p in sorted((staging / SIGNING_DIR).iterdir())]
        members += [ADMIN_TOKEN] if (staging / ADMIN_TOKEN).is_file() else []
        manifest = BackupManifest(
            format=ARCHIVE_FORMAT,
            created_s=time.time(),
            store_dump=store_dump,
            branch=branch_name,
            head=head,
            public_key=public_key,
            counts=counts,
            files={name: _sha256(staging / name) for name in members},
        )
        partial = staging / "archive.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            manifest_bytes = manifest.to_json().encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(manifest_bytes), 0o600, int(manifest.created_s)
            tar.addfile(info, io.BytesIO(manifest_bytes))
            for name in members:
                tar.add(staging / name, arcname=name, recursive=False)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, archive)
    log.info("backup %s: head %s, %s", archive, head[:10], counts)
    return manifest


# ---------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------


def read_manifest(archive: Path) -> BackupManifest:
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            member = tar.getmember(MANIFEST)
            handle = tar.extractfile(member)
            if handle is None:
                raise OpsError(f"{archive}: {MANIFEST} is not a file")
            return BackupManifest.from_json(handle.read().decode())
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise OpsError(f"{archive} is not a readable autoswarm backup: {exc}") from None


def _unpack(archive: Path, into: Path) -> BackupManifest:
    """Extract exactly the members the manifest lists, each checked against its sha256."""
    manifest = read_manifest(archive)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            names = {m.name for m in tar.getmembers()}
            unexpected = names - set(manifest.files) - {MANIFEST}
            missing = set(manifest.files) - names
            if unexpected or missing:
                raise OpsError(f"{archive}: members differ from the manifest (extra {sorted(unexpected)}, "
                               f"missing {sorted(missing)})")
            for name in manifest.files:
                member = tar.getmember(name)
                if not member.isfile() or name.startswith("/") or ".." in Path(name).parts:
                    raise OpsError(f"{archive}: refusing member {name!r}")
                source = tar.extractfile(member)
                assert source is not None
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise OpsError(f"{archive} is damaged: {exc}") from None
    for name, digest in manifest.files.items():
        if _sha256(into / name) != digest:
            raise OpsError(f"{archive}: {name} does not match its checksum (damaged archive)")
    return manifest


def _archived_snapshot(staging: Path, manifest: BackupManifest) -> StoreSnapshot:
    if manifest.store_dump == StoreDump.RECORDS:
        return read_snapshot(staging / RECORDS_DUMP)
    copy = open_store(f"sqlite:///{staging / SQLITE_DUMP}")
    try:
        return copy.export_snapshot()
    finally:
        copy.close()


def _occupied(data_dir: Path, store_url: str) -> list[str]:
    names = [BRANCH_DIR, SIGNING_DIR, ADMIN_TOKEN]
    sqlite_path = _sqlite_path(store_url)
    found = [str(data_dir / name) for name in names if (data_dir / name).exists()]
    if sqlite_path is not None and sqlite_path.exists():
        found.append(str(sqlite_path))
    return found


def _clear_store(store_url: str) -> None:
    """Undo an import into a store that was empty before (a failed verification)."""
    sqlite_path = _sqlite_path(store_url)
    if sqlite_path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        return
    from coordinator.store.redis_store import RedisStore

    store = RedisStore.from_url(store_url)
    try:
        store.delete_everything()
    finally:
        store.close()


def _import_verified(snapshot: StoreSnapshot, target_url: str) -> None:
    """Import into the (empty) target, read it back, and require the very same records."""
    target = open_store(target_url)
    try:
        target.import_snapshot(snapshot)
    except StoreError as exc:
        raise OpsError(f"the target store refused the import: {exc}") from None
    finally:
        target.close()
    reread = open_store(target_url)
    try:
        written = reread.export_snapshot()
    finally:
        reread.close()
    if written != snapshot:
        _clear_store(target_url)
        differing = [k for k, ids in snapshot.record_ids().items() if written.record_ids().get(k) != ids]
        raise OpsError(f"read-back differs from what was imported ({differing or 'field values'}); target cleared")


def restore(archive: Path, data_dir: Path, store_url: str = "") -> TransferReport:
    """Rebuild a coordinator from a backup into an empty data dir and an empty store (SQLite in
    the data dir by default, or any store URL). Refuses, changing nothing, when either holds
    state or the archive is damaged; verifies everything it wrote."""
    archive, data_dir = Path(archive), Path(data_dir)
    target_url = default_store_url(data_dir, store_url)
    occupied = _occupied(data_dir, target_url)
    if occupied:
        raise OpsError(f"refusing to restore over existing state: {', '.join(occupied)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".autoswarm-restore-", dir=data_dir) as tmp:
        staging = Path(tmp)
        manifest = _unpack(archive, staging)
        snapshot = _archived_snapshot(staging, manifest)
        if snapshot.counts() != manifest.counts:
            raise OpsError(f"{archive}: store holds {snapshot.counts()}, the manifest says {manifest.counts}")
        try:
            branch = GlobalBranch.restore(staging / BRANCH_BUNDLE, data_dir / BRANCH_DIR, manifest.branch)
            created.append(data_dir / BRANCH_DIR)
            if branch.head() != manifest.head:
                raise OpsError(f"restored head {branch.head()} is not the archived {manifest.head}")
            key_dir = data_dir / SIGNING_DIR
            key_dir.mkdir(mode=0o700)
            created.append(key_dir)
            for key_file in sorted((staging / SIGNING_DIR).iterdir()):
                _write_private(key_dir / key_file.name, key_file.read_bytes())
            if (staging / ADMIN_TOKEN).is_file():
                _write_private(data_dir / ADMIN_TOKEN, (staging / ADMIN_TOKEN).read_bytes())
                created.append(data_dir / ADMIN_TOKEN)
            from coordinator.service.signing import SigningKeys

            public_key = SigningKeys(key_dir).public_key.hex()
            if public_key != manifest.public_key:
                raise OpsError("restored signing key does not match the archived public key")
            _import_verified(snapshot, target_url)
        except (OpsError, BranchError, OSError, ValueError) as exc:
            for path in reversed(created):  # leave the data dir as empty as it was
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if isinstance(exc, OpsError):
                raise
            raise OpsError(f"restore failed: {exc}") from exc
    log.info("restored %s into %s: head %s, %s", archive, data_dir, manifest.head[:10], manifest.counts)
    return TransferReport(counts=snapshot.counts(), head=manifest.head, public_key=manifest.public_key)


# ---------------------------------------------------------------------------------------------
# Migration
# ---------------------------------------------------------------------------------------------


def migrate(source_url: str, target_url: str) -> TransferReport:
    """Copy every record of one store into another, empty one (SQLite -> Redis, say), verify the
    copy record by record, and refuse if the source changed meanwhile (the coordinator must be
    stopped). The source is never written."""
    if source_url == target_url:
        raise OpsError("source and target are the same store")
    source: Store = open_store(source_url)
    try:
        snapshot = source.export_snapshot()
        _import_verified(snapshot, target_url)
        if source.export_snapshot() != snapshot:
            _clear_store(target_url)
            raise OpsError("the source store changed during the migration: stop the coordinator and run it again")
    finally:
        source.close()
    log.info("migrated %s", snapshot.counts())
    return TransferReport(counts=snapshot.counts())


# ---------------------------------------------------------------------------------------------
# Mirror of the global branch
# ---------------------------------------------------------------------------------------------


class BranchMirror:
    """Pushes the global branch to a git remote after every move, off the request path.

    Requests coalesce: ten merges during one slow push cause one more push, of the newest head.
    A failed push is retried with backoff (the branch only grows, so a later push carries every
    commit); the coordinator never waits for the mirror."""

    def __init__(self, branch: GlobalBranch, remote_url: str) -> None:
        if not remote_url:
            raise OpsError("a mirror needs a remote URL")
        self.branch = branch
        self.remote_url = remote_url
        self.pushed_head = ""
        self.failures = 0
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Push once now (the mirror catches up after downtime), then after every request."""
        self._wanted.set()
        self._thread = threading.Thread(target=self._run, name="branch-mirror", daemon=True)
        self._thread.start()

    def request(self, head: str = "") -> None:
        self._wanted.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        retry_s = MIRROR_RETRY_S
        while not self._stopping.is_set():
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            head = self.branch.head()
            try:
                self.branch.push_mirror(self.remote_url)
            except BranchError as exc:
                self.failures += 1
                log.warning("mirror push of %s failed (retry in %.0f s): %s", head[:10], retry_s, exc)
                if self._stopping.wait(retry_s):
                    return
                retry_s = min(retry_s * 2, MIRROR_MAX_RETRY_S)
                self._wanted.set()
                continue
            retry_s = MIRROR_RETRY_S
            self.pushed_head = head
            log.info("mirrored %s to %s", head[:10], _redact(self.remote_url))


def _redact(url: str) -> str:
    """A remote URL without its password or token, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


# ---------------------------------------------------------------------------------------------
# Health probe (the container's HEALTHCHECK)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsProbe:
    root_certificates: bytes | None  # None: gRPC's bundled roots
    server_name: str


def tls_probe_for(cert_path: Path, ca_path: Path | None = None, server_name: str = "") -> TlsProbe:
    """How to verify our own server certificate over loopback: trust the given CA, else the
    certificate itself when it is self-signed, else the bundled public roots; check it against
    its own first DNS name (or common name) unless told otherwise."""
    from cryptography import x509

    pem = Path(cert_path).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if not server_name:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            server_name = next(iter(names.get_values_for_type(x509.DNSName)), "")
        except x509.ExtensionNotFound:
            pass
    if not server_name:
        common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        server_name = str(common[0].value) if common else ""
    if ca_path is not None:
        roots: bytes | None = Path(ca_path).read_bytes()
    elif cert.issuer == cert.subject:
        roots = pem
    else:
        roots = None
    return TlsProbe(roots, server_name)


def check_health(address: str, tls: TlsProbe | None = None, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """True when the gRPC health service at address answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.root_certificates)
        channel = grpc.secure_channel(address, credentials, options=options)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                             timeout=timeout_s)
    except grpc.RpcError as exc:
        log.warning("health check of %s failed: %s", address, exc.code().name)
        return False
    finally:
        channel.close()
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def local_address(listen: str) -> str:
    """The loopback address of a listen address (0.0.0.0:50051 -> 127.0.0.1:50051)."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"
