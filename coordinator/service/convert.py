"""Translation between autoswarm.v1 messages and store types. No logic beyond mapping and checks
that a message is well-formed (finite numbers, known enums)."""

from __future__ import annotations

import math

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.store.errors import InvalidValueError
from coordinator.store.types import (
    Hypothesis,
    HypothesisSource,
    HypothesisState,
    MergeRecord,
    NormalizedScore,
    ResultRecord,
    RunMetrics,
    RunStatus,
    UnitKind,
)

RUN_STATUS_TO_PB = {
    RunStatus.OK: pb.RUN_STATUS_OK,
    RunStatus.CRASH: pb.RUN_STATUS_CRASH,
    RunStatus.TIMEOUT: pb.RUN_STATUS_TIMEOUT,
    RunStatus.OOM: pb.RUN_STATUS_OOM,
    RunStatus.NAN: pb.RUN_STATUS_NAN,
}
RUN_STATUS_FROM_PB = {v: k for k, v in RUN_STATUS_TO_PB.items()}

UNIT_KIND_TO_PB = {
    UnitKind.BASELINE: pb.UNIT_KIND_BASELINE,
    UnitKind.CANDIDATE: pb.UNIT_KIND_CANDIDATE,
    UnitKind.REPLICATE: pb.UNIT_KIND_REPLICATE,
}
UNIT_KIND_FROM_PB = {v: k for k, v in UNIT_KIND_TO_PB.items()}

HYPOTHESIS_STATE_TO_PB = {state: pb.HypothesisState.Value(f"HYPOTHESIS_STATE_{state.name}") for state in HypothesisState}
HYPOTHESIS_STATE_FROM_PB = {v: k for k, v in HYPOTHESIS_STATE_TO_PB.items()}

SOURCE_TO_PB = {
    HypothesisSource.HUMAN: pb.HYPOTHESIS_SOURCE_HUMAN,
    HypothesisSource.AGENT: pb.HYPOTHESIS_SOURCE_AGENT,
    HypothesisSource.BUILTIN: pb.HYPOTHESIS_SOURCE_BUILTIN,
}
SOURCE_FROM_PB = {v: k for k, v in SOURCE_TO_PB.items()}


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidValueError(f"{name} must be finite, got {value!r}")
    return value


def metrics_from_pb(message: pb.RunResult) -> RunMetrics:
    if message.status not in RUN_STATUS_FROM_PB:
        raise InvalidValueError("result.status is missing or unknown")
    return RunMetrics(
        status=RUN_STATUS_FROM_PB[message.status],
        val_bpb=_finite("val_bpb", message.val_bpb),
        peak_memory_mb=_finite("peak_memory_mb", message.peak_memory_mb),
        num_steps=message.num_steps,
        total_tokens=message.total_tokens,
        mfu_percent=_finite("mfu_percent", message.mfu_percent),
        training_s=_finite("training_s", message.training_s),
        total_s=_finite("total_s", message.total_s),
        num_params_m=_finite("num_params_m", message.num_params_m),
        attention_backend=message.attention_backend,
        tokenizer_hash=message.tokenizer_hash,
        data_manifest_id=message.data_manifest_id,
        environment=dict(message.environment),
        log_tail=message.log_tail,
        error=message.error,
    )


def metrics_to_pb(metrics: RunMetrics) -> pb.RunResult:
    return pb.RunResult(
        status=RUN_STATUS_TO_PB[metrics.status],
        val_bpb=metrics.val_bpb,
        peak_memory_mb=metrics.peak_memory_mb,
        num_steps=metrics.num_steps,
        total_tokens=metrics.total_tokens,
        mfu_percent=metrics.mfu_percent,
        training_s=metrics.training_s,
        total_s=metrics.total_s,
        num_params_m=metrics.num_params_m,
        attention_backend=metrics.attention_backend,
        tokenizer_hash=metrics.tokenizer_hash,
        data_manifest_id=metrics.data_manifest_id,
        environment=dict(metrics.environment),
        log_tail=metrics.log_tail,
        error=metrics.error,
    )


def score_to_pb(score: NormalizedScore) -> pb.NormalizedScore:
    return pb.NormalizedScore(
        has_baseline=score.has_baseline,
        baseline_val_bpb=score.baseline_val_bpb,
        delta_bpb=score.delta_bpb,
        delta_percent=score.delta_percent,
        delta_sigma=score.delta_sigma,
        class_sigma=score.class_sigma,
        baseline_samples=score.baseline_samples,
    )


def result_to_pb(record: ResultRecord, title: str = "") -> pb.ResultRecord:
    return pb.ResultRecord(
        result_id=record.result_id,
        lease_id=record.lease_id,
        unit_id=record.unit_id,
        kind=UNIT_KIND_TO_PB[record.kind],
        hypothesis_id=record.hypothesis_id,
        hardware_class=record.hardware_class,
        base_commit=record.base_commit,
        volunteer_id=record.volunteer_id,
        owner=record.owner,
        result=metrics_to_pb(record.metrics),
        score=score_to_pb(record.score),
        reported_unix_s=record.reported_s,
        hypothesis_title=title,
        counts=record.counts,
    )


def hypothesis_to_pb(hypothesis: Hypothesis) -> pb.Hypothesis:
    return pb.Hypothesis(
        hypothesis_id=hypothesis.hypothesis_id,
        title=hypothesis.title,
        rationale=hypothesis.rationale,
        patch=hypothesis.patch,
        base_commit=hypothesis.base_commit,
        source=SOURCE_TO_PB[hypothesis.source],
        proposer=hypothesis.proposer_id,
        state=HYPOTHESIS_STATE_TO_PB[hypothesis.state],
        state_reason=hypothesis.state_reason,
        priority=hypothesis.priority,
        constant_changes=dict(hypothesis.constant_changes),
        created_unix_s=hypothesis.created_s,
        updated_unix_s=hypothesis.updated_s,
        merged_commit=hypothesis.merged_commit,
        touched_classes=list(hypothesis.touched_classes),
    )


def merge_to_pb(merge: MergeRecord) -> pb.MergeRecord:
    return pb.MergeRecord(
        commit=merge.commit,
        parent_commit=merge.parent_commit,
        hypothesis_id=merge.hypothesis_id,
        title=merge.title,
        delta_bpb_by_class=dict(merge.delta_bpb_by_class),
        merged_unix_s=merge.merged_s,
        reverted_by=merge.reverted_by,
        revert_reason=merge.revert_reason,
    )
