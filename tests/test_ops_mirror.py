"""The branch mirror's retries, and how the health probe chooses to verify TLS.

The mirror's happy path (a push after a merge in a running coordinator) is part of
tests/test_ops_backup.py; here a remote that is missing at first, then appears."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path

import pytest

from coordinator import ops
from coordinator.branch import GlobalBranch
from coordinator.server import initial_branch_files
from tests.test_deploy_support import self_signed_tls

WAIT_S = 30.0


def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_mirror_retries_until_the_remote_takes_the_branch(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(ops, "MIRROR_RETRY_S", 0.05)
    branch = GlobalBranch.open(tmp_path / "branch.git", "global", initial_branch_files())
    remote = tmp_path / "mirror.git"
    mirror = ops.BranchMirror(branch, str(remote))
    mirror.start()
    try:
        _until(lambda: mirror.failures >= 2, "failed pushes to a missing remote")
        assert mirror.pushed_head == ""
        subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
        _until(lambda: mirror.pushed_head == branch.head(), "the push once the remote exists")
        mirror.request()  # nothing new: pushing again is harmless
    finally:
        mirror.stop()
    shown = subprocess.run(["git", "--git-dir", str(remote), "rev-parse", "refs/heads/global"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == branch.head()
    assert any("mirror push" in record.getMessage() for record in caplog.records)


def test_mirror_urls_lose_their_secrets_in_logs() -> None:
    assert ops._redact("https://user:s3cret@git.example.org/swarm.git") == "https://***@git.example.org/swarm.git"
    assert ops._redact("git@github.com:example/swarm.git") == "git@github.com:example/swarm.git"
    with pytest.raises(ops.OpsError):
        ops.BranchMirror(None, "")  # type: ignore[arg-type]


def test_health_probe_trusts_a_self_signed_certificate_and_names_it(tmp_path: Path) -> None:
    cert, _ = self_signed_tls(tmp_path)
    probe = ops.tls_probe_for(cert)
    assert probe.root_certificates == cert.read_bytes() and probe.server_name == "localhost"
    assert ops.tls_probe_for(cert, server_name="swarm.example.org").server_name == "swarm.example.org"


def test_health_probe_uses_public_roots_for_a_ca_signed_certificate(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, text)])

    leaf = (
        x509.CertificateBuilder().subject_name(name("swarm.example.org")).issuer_name(name("Example CA"))
        .public_key(leaf_key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    path = tmp_path / "leaf.crt"
    path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    probe = ops.tls_probe_for(path)
    assert probe.root_certificates is None and probe.server_name == "swarm.example.org"
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(b"ca bundle")
    assert ops.tls_probe_for(path, ca_file).root_certificates == b"ca bundle"


def test_local_address_of_a_listen_address() -> None:
    assert ops.local_address("0.0.0.0:50051") == "127.0.0.1:50051"
    assert ops.local_address("[::]:7") == "127.0.0.1:7"
    assert ops.local_address("10.0.0.5:50051") == "10.0.0.5:50051"


def test_health_probe_says_not_serving_when_nothing_listens() -> None:
    from tests.test_deploy_support import free_port

    assert not ops.check_health(f"127.0.0.1:{free_port()}", timeout_s=1.0)
