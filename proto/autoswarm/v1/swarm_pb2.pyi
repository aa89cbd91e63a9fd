from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_VOLUNTEER: _ClassVar[Role]
    ROLE_PROPOSER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]

class UnitKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNIT_KIND_UNSPECIFIED: _ClassVar[UnitKind]
    UNIT_KIND_BASELINE: _ClassVar[UnitKind]
    UNIT_KIND_CANDIDATE: _ClassVar[UnitKind]
    UNIT_KIND_REPLICATE: _ClassVar[UnitKind]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_OK: _ClassVar[RunStatus]
    RUN_STATUS_CRASH: _ClassVar[RunStatus]
    RUN_STATUS_TIMEOUT: _ClassVar[RunStatus]
    RUN_STATUS_OOM: _ClassVar[RunStatus]
    RUN_STATUS_NAN: _ClassVar[RunStatus]

class HypothesisState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HYPOTHESIS_STATE_UNSPECIFIED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_QUEUED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_LEASED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_MEASURED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_REJECTED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_PROMISING: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_REPLICATING: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_CONFIRMED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_MERGED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_CONFLICTED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_SUPERSEDED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_FAILED: _ClassVar[HypothesisState]
    HYPOTHESIS_STATE_REVERTED: _ClassVar[HypothesisState]

class HypothesisSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HYPOTHESIS_SOURCE_UNSPECIFIED: _ClassVar[HypothesisSource]
    HYPOTHESIS_SOURCE_HUMAN: _ClassVar[HypothesisSource]
    HYPOTHESIS_SOURCE_AGENT: _ClassVar[HypothesisSource]
    HYPOTHESIS_SOURCE_BUILTIN: _ClassVar[HypothesisSource]
ROLE_UNSPECIFIED: Role
ROLE_VOLUNTEER: Role
ROLE_PROPOSER: Role
ROLE_ADMIN: Role
UNIT_KIND_UNSPECIFIED: UnitKind
UNIT_KIND_BASELINE: UnitKind
UNIT_KIND_CANDIDATE: UnitKind
UNIT_KIND_REPLICATE: UnitKind
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_OK: RunStatus
RUN_STATUS_CRASH: RunStatus
RUN_STATUS_TIMEOUT: RunStatus
RUN_STATUS_OOM: RunStatus
RUN_STATUS_NAN: RunStatus
HYPOTHESIS_STATE_UNSPECIFIED: HypothesisState
HYPOTHESIS_STATE_QUEUED: HypothesisState
HYPOTHESIS_STATE_LEASED: HypothesisState
HYPOTHESIS_STATE_MEASURED: HypothesisState
HYPOTHESIS_STATE_REJECTED: HypothesisState
HYPOTHESIS_STATE_PROMISING: HypothesisState
HYPOTHESIS_STATE_REPLICATING: HypothesisState
HYPOTHESIS_STATE_CONFIRMED: HypothesisState
HYPOTHESIS_STATE_MERGED: HypothesisState
HYPOTHESIS_STATE_CONFLICTED: HypothesisState
HYPOTHESIS_STATE_SUPERSEDED: HypothesisState
HYPOTHESIS_STATE_FAILED: HypothesisState
HYPOTHESIS_STATE_REVERTED: HypothesisState
HYPOTHESIS_SOURCE_UNSPECIFIED: HypothesisSource
HYPOTHESIS_SOURCE_HUMAN: HypothesisSource
HYPOTHESIS_SOURCE_AGENT: HypothesisSource
HYPOTHESIS_SOURCE_BUILTIN: HypothesisSource

class HardwareFingerprint(_message.Message):
    __slots__ = ("device_type", "device_name", "memory_bytes", "compute_capability", "driver_version", "torch_version", "cuda_version", "device_count", "cpu_count", "os", "python_version")
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_type: str
    device_name: str
    memory_bytes: int
    compute_capability: str
    driver_version: str
    torch_version: str
    cuda_version: str
    device_count: int
    cpu_count: int
    os: str
    python_version: str
    def __init__(self, device_type: _Optional[str] = ..., device_name: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., compute_capability: _Optional[str] = ..., driver_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., cuda_version: _Optional[str] = ..., device_count: _Optional[int] = ..., cpu_count: _Optional[int] = ..., os: _Optional[str] = ..., python_version: _Optional[str] = ...) -> None: ...

class SwarmSettings(_message.Message):
    __slots__ = ("budget_s", "data_manifest_id", "dataset_name", "tokenizer_hash", "lease_duration_s", "heartbeat_interval_s")
    BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    DATA_MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_HASH_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    budget_s: float
    data_manifest_id: str
    dataset_name: str
    tokenizer_hash: str
    lease_duration_s: float
    heartbeat_interval_s: float
    def __init__(self, budget_s: _Optional[float] = ..., data_manifest_id: _Optional[str] = ..., dataset_name: _Optional[str] = ..., tokenizer_hash: _Optional[str] = ..., lease_duration_s: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class WorkUnit(_message.Message):
    __slots__ = ("lease_id", "unit_id", "kind", "hypothesis_id", "hardware_class", "base_commit", "train_py", "profiles_json", "settings", "lease_deadline_unix_s", "issued_unix_s", "volunteer_id")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BASE_COMMIT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_PY_FIELD_NUMBER: _ClassVar[int]
    PROFILES_JSON_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    VOLUNTEER_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    unit_id: str
    kind: UnitKind
    hypothesis_id: str
    hardware_class: str
    base_commit: str
    train_py: str
    profiles_json: str
    settings: SwarmSettings
    lease_deadline_unix_s: float
    issued_unix_s: float
    volunteer_id: str
    def __init__(self, lease_id: _Optional[str] = ..., unit_id: _Optional[str] = ..., kind: _Optional[_Union[UnitKind, str]] = ..., hypothesis_id: _Optional[str] = ..., hardware_class: _Optional[str] = ..., base_commit: _Optional[str] = ..., train_py: _Optional[str] = ..., profiles_json: _Optional[str] = ..., settings: _Optional[_Union[SwarmSettings, _Mapping]] = ..., lease_deadline_unix_s: _Optional[float] = ..., issued_unix_s: _Optional[float] = ..., volunteer_id: _Optional[str] = ...) -> None: ...

class SignedWorkUnit(_message.Message):
    __slots__ = ("work_unit", "signature", "key_id")
    WORK_UNIT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    work_unit: bytes
    signature: bytes
    key_id: str
    def __init__(self, work_unit: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class RunResult(_message.Message):
    __slots__ = ("status", "val_bpb", "peak_memory_mb", "num_steps", "total_tokens", "mfu_percent", "training_s", "total_s", "num_params_m", "attention_backend", "tokenizer_hash", "data_manifest_id", "environment", "log_tail", "error")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VAL_BPB_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MFU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_M_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_BACKEND_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_HASH_FIELD_NUMBER: _ClassVar[int]
    DATA_MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    val_bpb: float
    peak_memory_mb: float
    num_steps: int
    total_tokens: int
    mfu_percent: float
    training_s: float
    total_s: float
    num_params_m: float
    attention_backend: str
    tokenizer_hash: str
    data_manifest_id: str
    environment: _containers.ScalarMap[str, str]
    log_tail: str
    error: str
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., val_bpb: _Optional[float] = ..., peak_memory_mb: _Optional[float] = ..., num_steps: _Optional[int] = ..., total_tokens: _Optional[int] = ..., mfu_percent: _Optional[float] = ..., training_s: _Optional[float] = ..., total_s: _Optional[float] = ..., num_params_m: _Optional[float] = ..., attention_backend: _Optional[str] = ..., tokenizer_hash: _Optional[str] = ..., data_manifest_id: _Optional[str] = ..., environment: _Optional[_Mapping[str, str]] = ..., log_tail: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class NormalizedScore(_message.Message):
    __slots__ = ("has_baseline", "baseline_val_bpb", "delta_bpb", "delta_percent", "delta_sigma", "class_sigma", "baseline_samples")
    HAS_BASELINE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VAL_BPB_FIELD_NUMBER: _ClassVar[int]
    DELTA_BPB_FIELD_NUMBER: _ClassVar[int]
    DELTA_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DELTA_SIGMA_FIELD_NUMBER: _ClassVar[int]
    CLASS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    has_baseline: bool
    baseline_val_bpb: float
    delta_bpb: float
    delta_percent: float
    delta_sigma: float
    class_sigma: float
    baseline_samples: int
    def __init__(self, has_baseline: _Optional[bool] = ..., baseline_val_bpb: _Optional[float] = ..., delta_bpb: _Optional[float] = ..., delta_percent: _Optional[float] = ..., delta_sigma: _Optional[float] = ..., class_sigma: _Optional[float] = ..., baseline_samples: _Optional[int] = ...) -> None: ...

class ResultRecord(_message.Message):
    __slots__ = ("result_id", "lease_id", "unit_id", "kind", "hypothesis_id", "hardware_class", "base_commit", "volunteer_id", "owner", "result", "score", "reported_unix_s", "hypothesis_title", "counts")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BASE_COMMIT_FIELD_NUMBER: _ClassVar[int]
    VOLUNTEER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_TITLE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    lease_id: str
    unit_id: str
    kind: UnitKind
    hypothesis_id: str
    hardware_class: str
    base_commit: str
    volunteer_id: str
    owner: str
    result: RunResult
    score: NormalizedScore
    reported_unix_s: float
    hypothesis_title: str
    counts: bool
    def __init__(self, result_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., unit_id: _Optional[str] = ..., kind: _Optional[_Union[UnitKind, str]] = ..., hypothesis_id: _Optional[str] = ..., hardware_class: _Optional[str] = ..., base_commit: _Optional[str] = ..., volunteer_id: _Optional[str] = ..., owner: _Optional[str] = ..., result: _Optional[_Union[RunResult, _Mapping]] = ..., score: _Optional[_Union[NormalizedScore, _Mapping]] = ..., reported_unix_s: _Optional[float] = ..., hypothesis_title: _Optional[str] = ..., counts: _Optional[bool] = ...) -> None: ...

class Hypothesis(_message.Message):
    __slots__ = ("hypothesis_id", "title", "rationale", "patch", "base_commit", "source", "proposer", "state", "state_reason", "priority", "constant_changes", "created_unix_s", "updated_unix_s", "merged_commit", "touched_classes")
    class ConstantChangesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    BASE_COMMIT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_CHANGES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MERGED_COMMIT_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    hypothesis_id: str
    title: str
    rationale: str
    patch: str
    base_commit: str
    source: HypothesisSource
    proposer: str
    state: HypothesisState
    state_reason: str
    priority: float
    constant_changes: _containers.ScalarMap[str, str]
    created_unix_s: float
    updated_unix_s: float
    merged_commit: str
    touched_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hypothesis_id: _Optional[str] = ..., title: _Optional[str] = ..., rationale: _Optional[str] = ..., patch: _Optional[str] = ..., base_commit: _Optional[str] = ..., source: _Optional[_Union[HypothesisSource, str]] = ..., proposer: _Optional[str] = ..., state: _Optional[_Union[HypothesisState, str]] = ..., state_reason: _Optional[str] = ..., priority: _Optional[float] = ..., constant_changes: _Optional[_Mapping[str, str]] = ..., created_unix_s: _Optional[float] = ..., updated_unix_s: _Optional[float] = ..., merged_commit: _Optional[str] = ..., touched_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class LeaderboardRow(_message.Message):
    __slots__ = ("key", "hardware_class", "baseline_val_bpb", "best_val_bpb", "class_sigma", "merged_wins", "total_gain_bpb", "runs", "gpu_hours", "confirmed_wins", "failure_rate", "display_name")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VAL_BPB_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_BPB_FIELD_NUMBER: _ClassVar[int]
    CLASS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    MERGED_WINS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GAIN_BPB_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    GPU_HOURS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_WINS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    key: str
    hardware_class: str
    baseline_val_bpb: float
    best_val_bpb: float
    class_sigma: float
    merged_wins: int
    total_gain_bpb: float
    runs: int
    gpu_hours: float
    confirmed_wins: int
    failure_rate: float
    display_name: str
    def __init__(self, key: _Optional[str] = ..., hardware_class: _Optional[str] = ..., baseline_val_bpb: _Optional[float] = ..., best_val_bpb: _Optional[float] = ..., class_sigma: _Optional[float] = ..., merged_wins: _Optional[int] = ..., total_gain_bpb: _Optional[float] = ..., runs: _Optional[int] = ..., gpu_hours: _Optional[float] = ..., confirmed_wins: _Optional[int] = ..., failure_rate: _Optional[float] = ..., display_name: _Optional[str] = ...) -> None: ...

class MergeRecord(_message.Message):
    __slots__ = ("commit", "parent_commit", "hypothesis_id", "title", "delta_bpb_by_class", "merged_unix_s", "reverted_by", "revert_reason")
    class DeltaBpbByClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    PARENT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DELTA_BPB_BY_CLASS_FIELD_NUMBER: _ClassVar[int]
    MERGED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    REVERTED_BY_FIELD_NUMBER: _ClassVar[int]
    REVERT_REASON_FIELD_NUMBER: _ClassVar[int]
    commit: str
    parent_commit: str
    hypothesis_id: str
    title: str
    delta_bpb_by_class: _containers.ScalarMap[str, float]
    merged_unix_s: float
    reverted_by: str
    revert_reason: str
    def __init__(self, commit: _Optional[str] = ..., parent_commit: _Optional[str] = ..., hypothesis_id: _Optional[str] = ..., title: _Optional[str] = ..., delta_bpb_by_class: _Optional[_Mapping[str, float]] = ..., merged_unix_s: _Optional[float] = ..., reverted_by: _Optional[str] = ..., revert_reason: _Optional[str] = ...) -> None: ...

class RegisterVolunteerRequest(_message.Message):
    __slots__ = ("hardware", "requested_class", "owner", "invite_token", "display_name")
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    INVITE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    hardware: HardwareFingerprint
    requested_class: str
    owner: str
    invite_token: str
    display_name: str
    def __init__(self, hardware: _Optional[_Union[HardwareFingerprint, _Mapping]] = ..., requested_class: _Optional[str] = ..., owner: _Optional[str] = ..., invite_token: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class RegisterVolunteerResponse(_message.Message):
    __slots__ = ("volunteer_id", "token", "hardware_class", "coordinator_public_key", "settings", "role")
    VOLUNTEER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    volunteer_id: str
    token: str
    hardware_class: str
    coordinator_public_key: bytes
    settings: SwarmSettings
    role: Role
    def __init__(self, volunteer_id: _Optional[str] = ..., token: _Optional[str] = ..., hardware_class: _Optional[str] = ..., coordinator_public_key: _Optional[bytes] = ..., settings: _Optional[_Union[SwarmSettings, _Mapping]] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class GetSwarmConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSwarmConfigResponse(_message.Message):
    __slots__ = ("settings", "coordinator_public_key", "previous_public_keys", "head_commit", "hardware_classes", "endorsements")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    HEAD_COMMIT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ENDORSEMENTS_FIELD_NUMBER: _ClassVar[int]
    settings: SwarmSettings
    coordinator_public_key: bytes
    previous_public_keys: _containers.RepeatedScalarFieldContainer[bytes]
    head_commit: str
    hardware_classes: _containers.RepeatedScalarFieldContainer[str]
    endorsements: _containers.RepeatedCompositeFieldContainer[KeyEndorsement]
    def __init__(self, settings: _Optional[_Union[SwarmSettings, _Mapping]] = ..., coordinator_public_key: _Optional[bytes] = ..., previous_public_keys: _Optional[_Iterable[bytes]] = ..., head_commit: _Optional[str] = ..., hardware_classes: _Optional[_Iterable[str]] = ..., endorsements: _Optional[_Iterable[_Union[KeyEndorsement, _Mapping]]] = ...) -> None: ...

class KeyEndorsement(_message.Message):
    __slots__ = ("public_key", "endorsed_by", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDORSED_BY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    endorsed_by: bytes
    signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., endorsed_by: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LeaseWorkRequest(_message.Message):
    __slots__ = ("hardware_class", "slot")
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    slot: int
    def __init__(self, hardware_class: _Optional[str] = ..., slot: _Optional[int] = ...) -> None: ...

class LeaseWorkResponse(_message.Message):
    __slots__ = ("unit", "retry_after_s")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    unit: SignedWorkUnit
    retry_after_s: float
    def __init__(self, unit: _Optional[_Union[SignedWorkUnit, _Mapping]] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "fraction_of_budget", "loss", "tokens_per_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    FRACTION_OF_BUDGET_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    fraction_of_budget: float
    loss: float
    tokens_per_s: float
    def __init__(self, step: _Optional[int] = ..., fraction_of_budget: _Optional[float] = ..., loss: _Optional[float] = ..., tokens_per_s: _Optional[float] = ...) -> None: ...

class ExtendLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "progress")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    progress: Progress
    def __init__(self, lease_id: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class ExtendLeaseResponse(_message.Message):
    __slots__ = ("lease_deadline_unix_s", "cancel")
    LEASE_DEADLINE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    lease_deadline_unix_s: float
    cancel: bool
    def __init__(self, lease_deadline_unix_s: _Optional[float] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("lease_id", "result")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    result: RunResult
    def __init__(self, lease_id: _Optional[str] = ..., result: _Optional[_Union[RunResult, _Mapping]] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ("result_id", "duplicate", "score", "hypothesis_state")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_STATE_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    duplicate: bool
    score: NormalizedScore
    hypothesis_state: HypothesisState
    def __init__(self, result_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., score: _Optional[_Union[NormalizedScore, _Mapping]] = ..., hypothesis_state: _Optional[_Union[HypothesisState, str]] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "reason")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reason: str
    def __init__(self, lease_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportRefusalRequest(_message.Message):
    __slots__ = ("lease_id", "reason")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reason: str
    def __init__(self, lease_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportRefusalResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubmitHypothesisRequest(_message.Message):
    __slots__ = ("title", "rationale", "patch", "base_commit", "constant_changes", "source", "priority")
    class ConstantChangesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TITLE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    BASE_COMMIT_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_CHANGES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    title: str
    rationale: str
    patch: str
    base_commit: str
    constant_changes: _containers.ScalarMap[str, str]
    source: HypothesisSource
    priority: float
    def __init__(self, title: _Optional[str] = ..., rationale: _Optional[str] = ..., patch: _Optional[str] = ..., base_commit: _Optional[str] = ..., constant_changes: _Optional[_Mapping[str, str]] = ..., source: _Optional[_Union[HypothesisSource, str]] = ..., priority: _Optional[float] = ...) -> None: ...

class SubmitHypothesisResponse(_message.Message):
    __slots__ = ("hypothesis_id", "state")
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    hypothesis_id: str
    state: HypothesisState
    def __init__(self, hypothesis_id: _Optional[str] = ..., state: _Optional[_Union[HypothesisState, str]] = ...) -> None: ...

class GetHypothesisRequest(_message.Message):
    __slots__ = ("hypothesis_id",)
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    hypothesis_id: str
    def __init__(self, hypothesis_id: _Optional[str] = ...) -> None: ...

class GetHypothesisResponse(_message.Message):
    __slots__ = ("hypothesis", "results")
    HYPOTHESIS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    hypothesis: Hypothesis
    results: _containers.RepeatedCompositeFieldContainer[ResultRecord]
    def __init__(self, hypothesis: _Optional[_Union[Hypothesis, _Mapping]] = ..., results: _Optional[_Iterable[_Union[ResultRecord, _Mapping]]] = ...) -> None: ...

class ListHypothesesRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[HypothesisState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[HypothesisState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHypothesesResponse(_message.Message):
    __slots__ = ("hypotheses", "next_page_token")
    HYPOTHESES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hypotheses: _containers.RepeatedCompositeFieldContainer[Hypothesis]
    next_page_token: str
    def __init__(self, hypotheses: _Optional[_Iterable[_Union[Hypothesis, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBestRequest(_message.Message):
    __slots__ = ("hardware_class",)
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    def __init__(self, hardware_class: _Optional[str] = ...) -> None: ...

class GetBestResponse(_message.Message):
    __slots__ = ("commit", "train_py", "profiles_json", "val_bpb")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_PY_FIELD_NUMBER: _ClassVar[int]
    PROFILES_JSON_FIELD_NUMBER: _ClassVar[int]
    VAL_BPB_FIELD_NUMBER: _ClassVar[int]
    commit: str
    train_py: str
    profiles_json: str
    val_bpb: float
    def __init__(self, commit: _Optional[str] = ..., train_py: _Optional[str] = ..., profiles_json: _Optional[str] = ..., val_bpb: _Optional[float] = ...) -> None: ...

class ListResultsRequest(_message.Message):
    __slots__ = ("hardware_class", "status", "since_unix_s", "hypothesis_id", "volunteer_id", "page_size", "page_token")
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUNTEER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    status: RunStatus
    since_unix_s: float
    hypothesis_id: str
    volunteer_id: str
    page_size: int
    page_token: str
    def __init__(self, hardware_class: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., since_unix_s: _Optional[float] = ..., hypothesis_id: _Optional[str] = ..., volunteer_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ResultRecord]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[ResultRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLeaderboardRequest(_message.Message):
    __slots__ = ("by", "hardware_class")
    class By(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BY_UNSPECIFIED: _ClassVar[GetLeaderboardRequest.By]
        BY_CLASS: _ClassVar[GetLeaderboardRequest.By]
        BY_VOLUNTEER: _ClassVar[GetLeaderboardRequest.By]
        BY_OWNER: _ClassVar[GetLeaderboardRequest.By]
    BY_UNSPECIFIED: GetLeaderboardRequest.By
    BY_CLASS: GetLeaderboardRequest.By
    BY_VOLUNTEER: GetLeaderboardRequest.By
    BY_OWNER: GetLeaderboardRequest.By
    BY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    by: GetLeaderboardRequest.By
    hardware_class: str
    def __init__(self, by: _Optional[_Union[GetLeaderboardRequest.By, str]] = ..., hardware_class: _Optional[str] = ...) -> None: ...

class GetLeaderboardResponse(_message.Message):
    __slots__ = ("rows", "merges")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[LeaderboardRow]
    merges: _containers.RepeatedCompositeFieldContainer[MergeRecord]
    def __init__(self, rows: _Optional[_Iterable[_Union[LeaderboardRow, _Mapping]]] = ..., merges: _Optional[_Iterable[_Union[MergeRecord, _Mapping]]] = ...) -> None: ...

class GetSwarmStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassStatus(_message.Message):
    __slots__ = ("hardware_class", "volunteers_online", "units_in_flight", "baseline_val_bpb", "class_sigma", "baseline_samples")
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    VOLUNTEERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    UNITS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VAL_BPB_FIELD_NUMBER: _ClassVar[int]
    CLASS_SIGMA_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    hardware_class: str
    volunteers_online: int
    units_in_flight: int
    baseline_val_bpb: float
    class_sigma: float
    baseline_samples: int
    def __init__(self, hardware_class: _Optional[str] = ..., volunteers_online: _Optional[int] = ..., units_in_flight: _Optional[int] = ..., baseline_val_bpb: _Optional[float] = ..., class_sigma: _Optional[float] = ..., baseline_samples: _Optional[int] = ...) -> None: ...

class GetSwarmStatusResponse(_message.Message):
    __slots__ = ("head_commit", "queue_depth", "units_in_flight", "volunteers_online", "classes", "recent_merges", "settings", "undecided_results")
    HEAD_COMMIT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    UNITS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    VOLUNTEERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    RECENT_MERGES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    UNDECIDED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    head_commit: str
    queue_depth: int
    units_in_flight: int
    volunteers_online: int
    classes: _containers.RepeatedCompositeFieldContainer[ClassStatus]
    recent_merges: _containers.RepeatedCompositeFieldContainer[MergeRecord]
    settings: SwarmSettings
    undecided_results: int
    def __init__(self, head_commit: _Optional[str] = ..., queue_depth: _Optional[int] = ..., units_in_flight: _Optional[int] = ..., volunteers_online: _Optional[int] = ..., classes: _Optional[_Iterable[_Union[ClassStatus, _Mapping]]] = ..., recent_merges: _Optional[_Iterable[_Union[MergeRecord, _Mapping]]] = ..., settings: _Optional[_Union[SwarmSettings, _Mapping]] = ..., undecided_results: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("merges",)
    MERGES_FIELD_NUMBER: _ClassVar[int]
    merges: _containers.RepeatedCompositeFieldContainer[MergeRecord]
    def __init__(self, merges: _Optional[_Iterable[_Union[MergeRecord, _Mapping]]] = ...) -> None: ...

class CreateInviteRequest(_message.Message):
    __slots__ = ("owner", "max_uses", "ttl_s")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    owner: str
    max_uses: int
    ttl_s: float
    def __init__(self, owner: _Optional[str] = ..., max_uses: _Optional[int] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CreateInviteResponse(_message.Message):
    __slots__ = ("invite_token",)
    INVITE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invite_token: str
    def __init__(self, invite_token: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("role", "name", "owner")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    role: Role
    name: str
    owner: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("principal_id", "token")
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    principal_id: str
    token: str
    def __init__(self, principal_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class RevokeVolunteerRequest(_message.Message):
    __slots__ = ("volunteer_id", "reason")
    VOLUNTEER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    volunteer_id: str
    reason: str
    def __init__(self, volunteer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeVolunteerResponse(_message.Message):
    __slots__ = ("results_discounted",)
    RESULTS_DISCOUNTED_FIELD_NUMBER: _ClassVar[int]
    results_discounted: int
    def __init__(self, results_discounted: _Optional[int] = ...) -> None: ...

class RevokeOwnerRequest(_message.Message):
    __slots__ = ("owner", "reason")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    owner: str
    reason: str
    def __init__(self, owner: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeOwnerResponse(_message.Message):
    __slots__ = ("volunteers_revoked", "results_discounted")
    VOLUNTEERS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_DISCOUNTED_FIELD_NUMBER: _ClassVar[int]
    volunteers_revoked: int
    results_discounted: int
    def __init__(self, volunteers_revoked: _Optional[int] = ..., results_discounted: _Optional[int] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ("transition_s",)
    TRANSITION_S_FIELD_NUMBER: _ClassVar[int]
    transition_s: float
    def __init__(self, transition_s: _Optional[float] = ...) -> None: ...

class RotateSigningKeyResponse(_message.Message):
    __slots__ = ("new_public_key", "previous_public_key")
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    new_public_key: bytes
    previous_public_key: bytes
    def __init__(self, new_public_key: _Optional[bytes] = ..., previous_public_key: _Optional[bytes] = ...) -> None: ...

class SetHypothesisPriorityRequest(_message.Message):
    __slots__ = ("hypothesis_id", "priority")
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    hypothesis_id: str
    priority: float
    def __init__(self, hypothesis_id: _Optional[str] = ..., priority: _Optional[float] = ...) -> None: ...

class SetHypothesisPriorityResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelHypothesisRequest(_message.Message):
    __slots__ = ("hypothesis_id", "reason")
    HYPOTHESIS_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    hypothesis_id: str
    reason: str
    def __init__(self, hypothesis_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelHypothesisResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
