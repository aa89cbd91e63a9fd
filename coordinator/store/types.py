"""The store's value types. Plain frozen dataclasses and string enums: no protobuf, no I/O.

The service translates between these and `autoswarm.v1` messages; the policy reads them.
Times are seconds since the epoch on the store's clock (`*_s`), never the caller's.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# Payload limits enforced by every backend (bytes of UTF-8). Larger input is refused, never cut.
MAX_TITLE_BYTES = 200
MAX_RATIONALE_BYTES = 8_000
MAX_PATCH_BYTES = 200_000
MAX_TRAIN_PY_BYTES = 400_000
MAX_PROFILES_BYTES = 100_000
MAX_LOG_TAIL_BYTES = 16_000
MAX_ERROR_BYTES = 2_000
MAX_ENVIRONMENT_ENTRIES = 64
MAX_LIST_ENTRIES = 64  # excluded volunteers/owners, touched classes, constant changes, per-class deltas
MAX_SHORT_TEXT_BYTES = 200  # ids, names, class names, hashes, commits
MAX_REASON_BYTES = 2_000  # state, revocation, release and revert reasons (may quote an error)
MAX_HARDWARE_JSON_BYTES = 16_000
MAX_META_VALUE_BYTES = 400_000


class Role(enum.StrEnum):
    VOLUNTEER = "volunteer"
    PROPOSER = "proposer"
    ADMIN = "admin"


class UnitKind(enum.StrEnum):
    BASELINE = "baseline"
    CANDIDATE = "candidate"
    REPLICATE = "replicate"


# Leasing order: baselines a class still needs first, then replicates, then candidates.
UNIT_KIND_RANK: dict[UnitKind, int] = {UnitKind.BASELINE: 0, UnitKind.REPLICATE: 1, UnitKind.CANDIDATE: 2}


class UnitState(enum.StrEnum):
    QUEUED = "queued"        # leasable
    LEASED = "leased"        # held by one active lease
    DONE = "done"            # a result was recorded
    CANCELLED = "cancelled"  # no longer needed


class LeaseState(enum.StrEnum):
    ACTIVE = "active"
    REPORTED = "reported"
    EXPIRED = "expired"
    RELEASED = "released"


class RunStatus(enum.StrEnum):
    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OOM = "oom"
    NAN = "nan"


class HypothesisState(enum.StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    MEASURED = "measured"
    REJECTED = "rejected"
    PROMISING = "promising"
    REPLICATING = "replicating"
    CONFIRMED = "confirmed"
    MERGED = "merged"
    CONFLICTED = "conflicted"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    REVERTED = "reverted"


TERMINAL_HYPOTHESIS_STATES = frozenset(
    {
        HypothesisState.REJECTED,
        HypothesisState.MERGED,
        HypothesisState.CONFLICTED,
        HypothesisState.SUPERSEDED,
        HypothesisState.FAILED,
        HypothesisState.REVERTED,
    }
)


class HypothesisSource(enum.StrEnum):
    HUMAN = "human"
    AGENT = "agent"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class LeaseExtension:
    """One heartbeat, for Store.extend_leases."""

    lease_id: str
    volunteer_id: str
    lease_duration_s: float
    step: int = 0
    fraction: float = 0.0
    loss: float = 0.0


@dataclass(frozen=True)
class ReportContext:
    """What a report needs to know before it is scored (Store.report_context): the lease, its
    unit (without code), the result already stored for the lease, if it is no longer active, and
    the class statistics last published for the unit's (class, base commit), if any."""

    lease: Lease
    unit: WorkUnit
    existing: ResultRecord | None
    class_stats: ClassStats | None = None


@dataclass(frozen=True)
class Principal:
    """A volunteer daemon, or a person/agent with a proposer or admin token."""

    principal_id: str
    role: Role
    owner: str
    display_name: str
    token_hash: str  # hex sha256 of the secret token; the token itself is never stored
    hardware_class: str = ""
    hardware_json: str = "{}"
    created_s: float = 0.0
    last_seen_s: float = 0.0
    revoked: bool = False
    revoked_reason: str = ""


@dataclass(frozen=True)
class Invite:
    token_hash: str
    owner: str
    max_uses: int = 1
    uses: int = 0
    expires_s: float = 0.0  # 0: never
    created_s: float = 0.0


@dataclass(frozen=True)
class Hypothesis:
    hypothesis_id: str
    title: str
    rationale: str
    patch: str  # unified diff against base_commit
    base_commit: str
    source: HypothesisSource
    proposer_id: str
    fingerprint: str  # normalized change; unique among hypotheses (duplicates are refused)
    state: HypothesisState = HypothesisState.QUEUED
    state_reason: str = ""
    priority: float = 0.0
    constant_changes: Mapping[str, str] = field(default_factory=dict)  # NAME -> Python literal
    touched_classes: tuple[str, ...] = ()  # classes whose profile the change edits
    created_s: float = 0.0
    updated_s: float = 0.0
    merged_commit: str = ""


@dataclass(frozen=True)
class WorkUnit:
    """One experiment to run once on one class: the code is complete, no lookup needed. (Stores
    keep each distinct text once and the unit's hashes of it; callers always see the full text.)"""

    unit_id: str
    kind: UnitKind
    hardware_class: str
    base_commit: str
    train_py: str
    profiles_json: str
    hypothesis_id: str = ""  # empty for baselines
    priority: float = 0.0
    state: UnitState = UnitState.QUEUED
    attempts: int = 0  # leases issued so far
    excluded_volunteers: tuple[str, ...] = ()  # a replicate never goes to whom it checks
    excluded_owners: tuple[str, ...] = ()
    created_s: float = 0.0


@dataclass(frozen=True)
class CodeStorage:
    """How a store holds unit code: each distinct text once (content-addressed by sha256), shared
    by every unit that runs it. For operators watching growth, and tests of the sharing."""

    blobs: int  # distinct texts stored (train.py and profiles.json alike)
    blob_bytes: int  # their UTF-8 bytes


@dataclass(frozen=True)
class Lease:
    lease_id: str
    unit_id: str
    volunteer_id: str
    owner: str
    issued_s: float
    deadline_s: float
    state: LeaseState = LeaseState.ACTIVE
    slot: int = 0
    progress_step: int = 0
    progress_fraction: float = 0.0
    progress_loss: float = 0.0
    heartbeat_s: float = 0.0
    ended_s: float = 0.0  # when it stopped being active (reported, expired, released); 0 while active
    end_reason: str = ""


@dataclass(frozen=True)
class RunMetrics:
    """What a volunteer reported for one run (mirrors autoswarm.v1.RunResult)."""

    status: RunStatus
    val_bpb: float = 0.0
    peak_memory_mb: float = 0.0
    num_steps: int = 0
    total_tokens: int = 0
    mfu_percent: float = 0.0
    training_s: float = 0.0
    total_s: float = 0.0
    num_params_m: float = 0.0
    attention_backend: str = ""
    tokenizer_hash: str = ""
    data_manifest_id: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    log_tail: str = ""
    error: str = ""

    def numbers(self) -> dict[str, float]:
        return {
            "val_bpb": self.val_bpb,
            "peak_memory_mb": self.peak_memory_mb,
            "mfu_percent": self.mfu_percent,
            "training_s": self.training_s,
            "total_s": self.total_s,
            "num_params_m": self.num_params_m,
        }


@dataclass(frozen=True)
class NormalizedScore:
    """A result against its class baseline on the same base commit; positive is better."""

    has_baseline: bool = False
    baseline_val_bpb: float = 0.0
    delta_bpb: float = 0.0
    delta_percent: float = 0.0
    delta_sigma: float = 0.0
    class_sigma: float = 0.0
    baseline_samples: int = 0


@dataclass(frozen=True)
class ResultRecord:
    result_id: str
    lease_id: str
    unit_id: str
    kind: UnitKind
    hypothesis_id: str
    hardware_class: str
    base_commit: str
    volunteer_id: str
    owner: str
    metrics: RunMetrics
    score: NormalizedScore
    reported_s: float
    counts: bool = True  # false once its volunteer or owner is revoked


@dataclass(frozen=True)
class ResultFilter:
    hardware_class: str = ""
    status: RunStatus | None = None
    since_s: float = 0.0
    hypothesis_id: str = ""
    volunteer_id: str = ""
    base_commit: str = ""
    kind: UnitKind | None = None
    counting_only: bool = False


@dataclass(frozen=True)
class ClassStats:
    """Baseline statistics of one class on one commit (derived from baseline results)."""

    hardware_class: str
    commit: str
    samples: int
    mean_val_bpb: float
    sigma: float
    updated_s: float = 0.0


@dataclass(frozen=True)
class MergeRecord:
    commit: str
    parent_commit: str
    hypothesis_id: str
    title: str
    delta_bpb_by_class: Mapping[str, float] = field(default_factory=dict)
    merged_s: float = 0.0
    reverted_by: str = ""
    revert_reason: str = ""


def replace(obj: object, **changes: object) -> object:
    """dataclasses.replace, re-exported so callers need one import."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def is_finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
