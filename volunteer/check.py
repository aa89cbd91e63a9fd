"""`autoswarm volunteer check`: a dry run a new user can trust. It changes nothing.

It looks at the hardware and its class, the sandbox, the stored identity, the coordinator, the
pinned key and the prepared data, and prints one line per check (`ok`, `warn`, `FAIL`) with, for
anything wrong, what to do about it in plain words. Exit code 0 when nothing failed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TextIO

CHECK_TIMEOUT_S = 5.0


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str
    message: str
    fix: str = ""


def _hardware(hardware_class: str) -> tuple[list[Finding], object | None]:
    from volunteer.machine import MachineError, detect_machine

    try:
        machine = detect_machine(hardware_class)
    except MachineError as exc:
        return [Finding(Level.FAIL, "hardware", str(exc), "pick a class this machine has, or --class auto")], None
    except Exception as exc:  # torch missing or broken
        return [Finding(Level.FAIL, "hardware", f"cannot inspect this machine: {type(exc).__name__}: {exc}",
                        "install the volunteer extras: pip install 'autoswarm[volunteer]'")], None
    findings = [Finding(Level.OK, "hardware", machine.describe())]
    if machine.class_exact:
        findings.append(Finding(Level.OK, "class", f"{machine.local_class} ({machine.class_reason})"))
    else:
        findings.append(Finding(
            Level.WARN, "class",
            f"unknown GPU: {machine.class_reason}. It can still run, measured against the {machine.local_class} "
            "class, but its numbers may differ from that class's machines",
            f"ask the operator to add a profile for {machine.device_name}, or pass --class NAME"))
    return findings, machine


def _sandbox() -> Finding:
    from volunteer.sandbox import probe_network_isolation

    isolation = probe_network_isolation()
    if isolation.enabled:
        return Finding(Level.OK, "sandbox", isolation.description)
    return Finding(Level.WARN, "sandbox", isolation.description,
                   "on Linux, allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                   "or run the volunteer as a service with CAP_SYS_ADMIN; the trainer's environment is scrubbed "
                   "either way")


def run_check(
    *,
    coordinator: str | None,
    data_dir: Path,
    hardware_class: str = "auto",
    cache_dir: Path | None = None,
    tls_ca: Path | None = None,
    dataset: str | None = None,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    findings: list[Finding] = []

    hardware_findings, machine = _hardware(hardware_class)
    findings += hardware_findings
    findings.append(_sandbox())

    # -- identity ---------------------------------------------------------------------------------
    from volunteer import trust
    from volunteer.identity import IdentityError, load_identity

    identity = None
    try:
        identity = load_identity(data_dir)
    except IdentityError as exc:
        findings.append(Finding(Level.FAIL, "identity", str(exc)))
    if identity is None and not any(f.topic == "identity" for f in findings):
        findings.append(Finding(Level.OK, "identity", f"not registered yet ({data_dir}): the first "
                                "`autoswarm volunteer run` registers and pins the coordinator's key"))
    elif identity is not None:
        findings.append(Finding(Level.OK, "identity", f"registered as {identity.volunteer_id}, class "
                                f"{identity.hardware_class}, with {identity.coordinator} (data dir {data_dir})"))
        if machine is not None and identity.hardware_class != getattr(machine, "local_class", identity.hardware_class):
            findings.append(Finding(Level.WARN, "class", f"this identity runs class {identity.hardware_class}, but "
                                    f"this machine now looks like {machine.local_class}",  # type: ignore[attr-defined]
                                    "if the hardware changed, register again with another --data-dir"))

    # -- coordinator and key ------------------------------------------------------------------------
    target = coordinator or (identity.coordinator if identity else None)
    config = None
    if not target:
        findings.append(Finding(Level.SKIP, "coordinator", "no coordinator given",
                                "pass --coordinator HOST:PORT to check that it is reachable"))
    else:
        from coordinator.client import CoordinatorClient, CoordinatorUnavailable

        client = CoordinatorClient(target, identity.token if identity else None, tls_ca=tls_ca,
                                   timeout_s=CHECK_TIMEOUT_S)
        try:
            config = client.config()
        except CoordinatorUnavailable as exc:
            findings.append(Finding(Level.FAIL, "coordinator", f"cannot reach the coordinator at {target}: {exc}",
                                    "check the address and port, that the coordinator is running, and that no "
                                    "firewall blocks it (and --tls-ca if it uses TLS)"))
        except Exception as exc:
            findings.append(Finding(Level.FAIL, "coordinator", f"the coordinator at {target} answered with an error: "
                                    f"{type(exc).__name__}: {exc}"))
        if config is not None:
            settings = config.settings
            findings.append(Finding(Level.OK, "coordinator", f"{target} is reachable: dataset {settings.dataset_name}, "
                                    f"budget {settings.budget_s:g}s, head {config.head_commit[:10]}"))
            presented = bytes(config.coordinator_public_key)
            if identity is None:
                findings.append(Finding(Level.OK, "key", f"the coordinator's key is {trust.fingerprint(presented)}; "
                                        "it will be pinned at registration"))
            else:
                try:
                    followed = trust.follow_key(identity.pinned_key, presented, config.endorsements)
                except trust.KeyChangedError as exc:
                    findings.append(Finding(Level.FAIL, "key", str(exc),
                                            "ask the operator whether the key was replaced; never ignore this"))
                else:
                    if followed == identity.pinned_key:
                        findings.append(Finding(Level.OK, "key", f"matches the pinned key "
                                                f"{trust.fingerprint(identity.pinned_key)}"))
                    else:
                        findings.append(Finding(Level.OK, "key", f"rotated from the pinned "
                                                f"{trust.fingerprint(identity.pinned_key)} to "
                                                f"{trust.fingerprint(followed)}, endorsed by the pinned key; "
                                                "the next run pins the new one"))
                    try:
                        client.status()
                        findings.append(Finding(Level.OK, "token", "the coordinator accepts this volunteer's token"))
                    except CoordinatorUnavailable:
                        pass
                    except Exception as exc:
                        findings.append(Finding(Level.FAIL, "token", f"the coordinator refuses this volunteer's "
                                                f"token: {exc}", "the volunteer may have been revoked; ask the "
                                                "operator, or register again with another --data-dir"))
        client.close()

    # -- data -----------------------------------------------------------------------------------
    name = dataset or (config.settings.dataset_name if config is not None else None)
    if not name:
        findings.append(Finding(Level.SKIP, "data", "unknown dataset (no coordinator to ask)",
                                "pass --coordinator, or --dataset NAME"))
    else:
        from shared_data.prepare import DataNotReadyError, load_prepared

        pinned = config.settings.data_manifest_id if config is not None else None
        try:
            prepared = load_prepared(name, cache_dir, expected_manifest_id=pinned or None)
        except DataNotReadyError as exc:
            findings.append(Finding(Level.FAIL, "data", f"{name} is not ready: {exc}",
                                    "`autoswarm volunteer run` prepares it before taking work (or run "
                                    f"`python -m shared_data.prepare --dataset {name}` now)"))
        except Exception as exc:
            findings.append(Finding(Level.FAIL, "data", f"{name}: {type(exc).__name__}: {exc}"))
        else:
            findings.append(Finding(Level.OK, "data", f"{name} prepared and verified: manifest "
                                    f"{prepared.manifest_id[:16]}, tokenizer {prepared.tokenizer_hash[:12]}"))

    _print(findings, out)
    return 1 if any(f.level == Level.FAIL for f in findings) else 0


def _print(findings: list[Finding], out: TextIO) -> None:
    width = max(len(f.topic) for f in findings)
    print("autoswarm volunteer check", file=out)
    for finding in findings:
        print(f"  {finding.level.value:<4}  {finding.topic:<{width}}  {finding.message}", file=out)
        if finding.fix and finding.level in (Level.FAIL, Level.WARN, Level.SKIP):
            print(f"  {'':<4}  {'':<{width}}  fix: {finding.fix}", file=out)
    failed = [f for f in findings if f.level == Level.FAIL]
    if failed:
        print(f"{len(failed)} problem(s): {', '.join(f.topic for f in failed)}. Nothing was changed.", file=out)
    else:
        print("ready to volunteer. Nothing was changed.", file=out)
