"""Pure formatting for the query commands: result rows, JSON shapes, tables, TSV and Parquet.

Nothing here talks to the network, so every format is tested from hand-built messages.

The result row
--------------
Every result becomes one flat row (`ResultRow`) with the columns of `RESULT_COLUMNS`, in that
order. The TSV, the Parquet file and `autoswarm results --json` all carry exactly these columns.
The first five are upstream autoresearch's results.tsv, so its analysis habits keep working:

    commit  val_bpb  memory_gb  status  description

- `status` follows upstream's keep | discard | crash: an ok run of a baseline or of a hypothesis
  that is merged (and not reverted) is `keep`, any other ok run is `discard`, and every failure
  (crash, timeout, oom, nan) is `crash`, logged as upstream does with val_bpb `0.000000` and
  memory_gb `0.0` (the measured peak stays in `peak_memory_mb`).
- `commit` is the short (7 character) commit of the global branch the row's code lives at: the
  merge commit for results of a merged hypothesis, otherwise the base commit it was measured on.
- The normalized scores (`delta_bpb`, `delta_percent`, `delta_sigma`) are improvements over the
  class baseline on the same base commit: positive is better. They are empty (null) for failures
  and for results measured before their class had a baseline. Compare them only within a class.

pyarrow is imported only when a Parquet function runs: status and leaderboard stay fast.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoswarm.v1 import swarm_pb2 as pb

if TYPE_CHECKING:
    import pyarrow as pa

SHORT_COMMIT_CHARS = 7  # upstream's results.tsv uses 7-character hashes
RESULTS_SCHEMA_NAME = "autoswarm.results/v1"  # bumped whenever a column changes meaning or type

# A row value: strings, numbers and booleans; None only in nullable columns.
Value = str | float | int | bool | None
ResultRow = dict[str, Value]


class UpstreamStatus(enum.StrEnum):
    """The status column of upstream's results.tsv."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"


class ColumnType(enum.StrEnum):
    STRING = "string"
    FLOAT = "float64"
    INT = "int64"
    BOOL = "bool"


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    doc: str
    nullable: bool = False
    tsv_format: str = ""  # format spec for floats in the TSV ("" = repr)


RESULT_COLUMNS: tuple[Column, ...] = (
    # --- upstream autoresearch's results.tsv, unchanged -----------------------------------------
    Column("commit", ColumnType.STRING, "short commit of the code: merge commit if merged, else base commit"),
    Column("val_bpb", ColumnType.FLOAT, "validation bits per byte (0.0 for failures)", tsv_format=".6f"),
    Column("memory_gb", ColumnType.FLOAT, "peak memory in GB, peak_memory_mb / 1024 (0.0 for failures)",
           tsv_format=".1f"),
    Column("status", ColumnType.STRING, "keep | discard | crash, as upstream"),
    Column("description", ColumnType.STRING, "what was tried: the hypothesis title, or 'baseline'"),
    # --- the swarm's columns ---------------------------------------------------------------------
    Column("class", ColumnType.STRING, "hardware class the run was scheduled for"),
    Column("volunteer", ColumnType.STRING, "volunteer id that ran it"),
    Column("owner", ColumnType.STRING, "owner (person or team) of that volunteer"),
    Column("kind", ColumnType.STRING, "baseline | candidate | replicate"),
    Column("hypothesis", ColumnType.STRING, "hypothesis id (empty for baselines)"),
    Column("delta_bpb", ColumnType.FLOAT, "class baseline - val_bpb on the same base commit; positive is better",
           nullable=True, tsv_format=".6f"),
    Column("delta_percent", ColumnType.FLOAT, "100 * delta_bpb / class baseline", nullable=True, tsv_format=".4f"),
    Column("delta_sigma", ColumnType.FLOAT, "delta_bpb / class sigma (run-to-run noise of identical code)",
           nullable=True, tsv_format=".3f"),
    Column("baseline_val_bpb", ColumnType.FLOAT, "the class baseline the deltas are measured against",
           nullable=True, tsv_format=".6f"),
    Column("class_sigma", ColumnType.FLOAT, "the class's noise estimate used for delta_sigma", nullable=True,
           tsv_format=".6f"),
    Column("baseline_samples", ColumnType.INT, "baseline runs behind baseline_val_bpb"),
    Column("run_status", ColumnType.STRING, "ok | crash | timeout | oom | nan"),
    Column("base_commit", ColumnType.STRING, "full commit the run's code derives from"),
    Column("merged_commit", ColumnType.STRING, "full merge commit of its hypothesis (empty unless merged)"),
    Column("result_id", ColumnType.STRING, "unique result id"),
    Column("reported_unix_s", ColumnType.FLOAT, "when the coordinator stored it, seconds since the epoch",
           tsv_format=".3f"),
    Column("num_steps", ColumnType.INT, "optimizer steps taken within the budget"),
    Column("total_tokens", ColumnType.INT, "training tokens seen"),
    Column("training_s", ColumnType.FLOAT, "seconds of timed training", tsv_format=".1f"),
    Column("total_s", ColumnType.FLOAT, "seconds of the whole run", tsv_format=".1f"),
    Column("mfu_percent", ColumnType.FLOAT, "model FLOPs utilization against the class's peak", tsv_format=".2f"),
    Column("peak_memory_mb", ColumnType.FLOAT, "peak memory as measured, also for failures", tsv_format=".1f"),
    Column("num_params_m", ColumnType.FLOAT, "parameters in millions", tsv_format=".1f"),
    Column("attention_backend", ColumnType.STRING, "fa3 | flex | sdpa"),
    Column("counts", ColumnType.BOOL, "false once its volunteer or owner was revoked"),
    Column("error", ColumnType.STRING, "short reason for a failure"),
)
RESULT_COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in RESULT_COLUMNS)
UPSTREAM_COLUMN_NAMES: tuple[str, ...] = ("commit", "val_bpb", "memory_gb", "status", "description")


# ---------------------------------------------------------------------------------------------
# Enum names as the CLI shows them
# ---------------------------------------------------------------------------------------------


def enum_name(enum_type: Any, value: int, prefix: str) -> str:
    """`RUN_STATUS_OK` -> `ok`; unknown numbers come out as their number (newer servers)."""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def run_status_name(value: int) -> str:
    return enum_name(pb.RunStatus, value, "RUN_STATUS_")


def unit_kind_name(value: int) -> str:
    return enum_name(pb.UnitKind, value, "UNIT_KIND_")


def hypothesis_state_name(value: int) -> str:
    return enum_name(pb.HypothesisState, value, "HYPOTHESIS_STATE_")


def source_name(value: int) -> str:
    return enum_name(pb.HypothesisSource, value, "HYPOTHESIS_SOURCE_")


RUN_STATUS_BY_NAME: dict[str, int] = {
    run_status_name(value): value for value in pb.RunStatus.values() if value != pb.RUN_STATUS_UNSPECIFIED
}

# States a hypothesis does not leave on its own: `--wait` stops following there.
TERMINAL_HYPOTHESIS_STATES: frozenset[int] = frozenset(
    {
        pb.HYPOTHESIS_STATE_REJECTED,
        pb.HYPOTHESIS_STATE_MERGED,
        pb.HYPOTHESIS_STATE_CONFLICTED,
        pb.HYPOTHESIS_STATE_SUPERSEDED,
        pb.HYPOTHESIS_STATE_FAILED,
        pb.HYPOTHESIS_STATE_REVERTED,
    }
)


# ---------------------------------------------------------------------------------------------
# Result rows
# ---------------------------------------------------------------------------------------------


def live_merged_commits(merges: Iterable[pb.MergeRecord]) -> dict[str, str]:
    """hypothesis id -> merge commit, for merges that were not reverted."""
    return {m.hypothesis_id: m.commit for m in merges if m.hypothesis_id and not m.reverted_by}


def upstream_status(record: pb.ResultRecord, merged_commits: Mapping[str, str]) -> UpstreamStatus:
    if record.result.status != pb.RUN_STATUS_OK:
        return UpstreamStatus.CRASH
    if record.kind == pb.UNIT_KIND_BASELINE or record.hypothesis_id in merged_commits:
        return UpstreamStatus.KEEP
    return UpstreamStatus.DISCARD


def _one_line(text: str) -> str:
    """Descriptions and errors must not break the TSV: tabs and newlines become spaces."""
    return " ".join(text.split())


def _positive_or_none(value: float) -> float | None:
    # The contract sends 0.0 for "unknown" baselines and sigmas.
    return value if value > 0.0 and math.isfinite(value) else None


def result_row(record: pb.ResultRecord, merged_commits: Mapping[str, str]) -> ResultRow:
    """One result as a flat row with the columns of RESULT_COLUMNS, in order."""
    run, score = record.result, record.score
    status = upstream_status(record, merged_commits)
    failed = status is UpstreamStatus.CRASH
    merged_commit = merged_commits.get(record.hypothesis_id, "") if record.hypothesis_id else ""
    kind = unit_kind_name(record.kind)
    if record.hypothesis_title:
        description = record.hypothesis_title
    elif record.kind == pb.UNIT_KIND_BASELINE:
        description = "baseline"
    else:
        description = record.hypothesis_id or kind
    if failed:
        description = f"{description} ({run_status_name(run.status)})"
    scored = score.has_baseline and not failed
    class_sigma = _positive_or_none(score.class_sigma) if score.has_baseline else None
    row: ResultRow = {
        "commit": (merged_commit or record.base_commit)[:SHORT_COMMIT_CHARS],
        "val_bpb": 0.0 if failed else run.val_bpb,
        "memory_gb": 0.0 if failed else round(run.peak_memory_mb / 1024.0, 1),
        "status": status.value,
        "description": _one_line(description),
        "class": record.hardware_class,
        "volunteer": record.volunteer_id,
        "owner": record.owner,
        "kind": kind,
        "hypothesis": record.hypothesis_id,
        "delta_bpb": score.delta_bpb if scored else None,
        "delta_percent": score.delta_percent if scored else None,
        "delta_sigma": score.delta_sigma if scored and class_sigma is not None else None,
        "baseline_val_bpb": _positive_or_none(score.baseline_val_bpb) if score.has_baseline else None,
        "class_sigma": class_sigma,
        "baseline_samples": int(score.baseline_samples),
        "run_status": run_status_name(run.status),
        "base_commit": record.base_commit,
        "merged_commit": merged_commit,
        "result_id": record.result_id,
        "reported_unix_s": record.reported_unix_s,
        "num_steps": int(run.num_steps),
        "total_tokens": int(run.total_tokens),
        "training_s": run.training_s,
        "total_s": run.total_s,
        "mfu_percent": run.mfu_percent,
        "peak_memory_mb": run.peak_memory_mb,
        "num_params_m": run.num_params_m,
        "attention_backend": run.attention_backend,
        "counts": bool(record.counts),
        "error": _one_line(run.error),
    }
    return row


def chronological(records: Iterable[pb.ResultRecord]) -> list[pb.ResultRecord]:
    """Results in the order they were reported, as upstream's results.tsv grows (the coordinator
    pages them by id)."""
    return sorted(records, key=lambda r: (r.reported_unix_s, r.result_id))


def result_rows(records: Iterable[pb.ResultRecord], merges: Iterable[pb.MergeRecord]) -> list[ResultRow]:
    merged = live_merged_commits(merges)
    return [result_row(record, merged) for record in records]


# ---------------------------------------------------------------------------------------------
# TSV (upstream's results.tsv, extended)
# ---------------------------------------------------------------------------------------------


def _tsv_cell(column: Column, value: Value) -> str:
    if value is None:
        return ""
    if column.type is ColumnType.BOOL:
        return "true" if value else "false"
    if column.type is ColumnType.FLOAT:
        return format(float(value), column.tsv_format) if column.tsv_format else repr(float(value))
    if column.type is ColumnType.INT:
        return str(int(value))
    return _one_line(str(value))


def rows_to_tsv(rows: Iterable[ResultRow]) -> str:
    """Tab-separated, a header line, one line per row, a trailing newline."""
    lines = ["\t".join(RESULT_COLUMN_NAMES)]
    for row in rows:
        lines.append("\t".join(_tsv_cell(column, row[column.name]) for column in RESULT_COLUMNS))
    return "\n".join(lines) + "\n"


def results_to_tsv(records: Iterable[pb.ResultRecord], merges: Iterable[pb.MergeRecord]) -> str:
    return rows_to_tsv(result_rows(records, merges))


# ---------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------


def results_arrow_schema() -> pa.Schema:
    """The explicit Parquet schema: one field per RESULT_COLUMNS entry, its doc as field metadata."""
    import pyarrow as pa

    arrow_types = {
        ColumnType.STRING: pa.string(),
        ColumnType.FLOAT: pa.float64(),
        ColumnType.INT: pa.int64(),
        ColumnType.BOOL: pa.bool_(),
    }
    fields = [
        pa.field(column.name, arrow_types[column.type], nullable=column.nullable, metadata={"doc": column.doc})
        for column in RESULT_COLUMNS
    ]
    return pa.schema(fields, metadata={"schema": RESULTS_SCHEMA_NAME})


def rows_to_arrow(rows: Sequence[ResultRow]) -> pa.Table:
    import pyarrow as pa

    schema = results_arrow_schema()
    columns = {name: [row[name] for row in rows] for name in RESULT_COLUMN_NAMES}
    # pyarrow does not enforce nullable=False on construction; a reader of the schema relies on it.
    for column in RESULT_COLUMNS:
        if not column.nullable and any(value is None for value in columns[column.name]):
            raise ValueError(f"column {column.name!r} is required but a row has no value")
    return pa.Table.from_pydict(columns, schema=schema)


def results_to_arrow(records: Iterable[pb.ResultRecord], merges: Iterable[pb.MergeRecord]) -> pa.Table:
    return rows_to_arrow(result_rows(records, merges))


def write_parquet(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, str(path))


# ---------------------------------------------------------------------------------------------
# JSON shapes (stable: fields are only ever added; the "schema" key names the version)
# ---------------------------------------------------------------------------------------------


def merge_to_json(merge: pb.MergeRecord) -> dict[str, Any]:
    return {
        "commit": merge.commit,
        "parent_commit": merge.parent_commit,
        "hypothesis_id": merge.hypothesis_id,
        "title": merge.title,
        "delta_bpb_by_class": dict(sorted(merge.delta_bpb_by_class.items())),
        "merged_unix_s": merge.merged_unix_s,
        "reverted_by": merge.reverted_by or None,
        "revert_reason": merge.revert_reason or None,
    }


def _gain_percent(baseline: float, gain: float) -> float | None:
    # The row's baseline is the head's; the class started at baseline + gain.
    start = baseline + gain
    return 100.0 * gain / start if baseline > 0.0 and start > 0.0 else None


def leaderboard_row_to_json(row: pb.LeaderboardRow) -> dict[str, Any]:
    sigma = _positive_or_none(row.class_sigma)
    return {
        "key": row.key,
        "display_name": row.display_name or None,
        "hardware_class": row.hardware_class,
        "baseline_val_bpb": _positive_or_none(row.baseline_val_bpb),
        "best_val_bpb": _positive_or_none(row.best_val_bpb),
        "class_sigma": sigma,
        "merged_wins": row.merged_wins,
        "total_gain_bpb": row.total_gain_bpb,
        "total_gain_percent": _gain_percent(row.baseline_val_bpb, row.total_gain_bpb),
        "total_gain_sigma": row.total_gain_bpb / sigma if sigma else None,
        "runs": row.runs,
        "gpu_hours": row.gpu_hours,
        "confirmed_wins": row.confirmed_wins,
        "failure_rate": row.failure_rate,
    }


def leaderboard_to_json(response: pb.GetLeaderboardResponse, by: str, hardware_class: str) -> dict[str, Any]:
    return {
        "schema": "autoswarm.leaderboard/v1",
        "by": by,
        "hardware_class": hardware_class or None,
        "rows": [leaderboard_row_to_json(row) for row in response.rows],
        "merges": [merge_to_json(m) for m in response.merges],
    }


def status_to_json(response: pb.GetSwarmStatusResponse) -> dict[str, Any]:
    settings = response.settings
    return {
        "schema": "autoswarm.status/v1",
        "head_commit": response.head_commit,
        "queue_depth": response.queue_depth,
        "units_in_flight": response.units_in_flight,
        "volunteers_online": response.volunteers_online,
        "undecided_results": response.undecided_results,  # reported, not yet judged
        "classes": [
            {
                "hardware_class": c.hardware_class,
                "volunteers_online": c.volunteers_online,
                "units_in_flight": c.units_in_flight,
                "baseline_val_bpb": _positive_or_none(c.baseline_val_bpb),
                "class_sigma": _positive_or_none(c.class_sigma),
                "baseline_samples": c.baseline_samples,
            }
            for c in response.classes
        ],
        "recent_merges": [merge_to_json(m) for m in response.recent_merges],
        "settings": {
            "budget_s": settings.budget_s,
            "dataset_name": settings.dataset_name,
            "data_manifest_id": settings.data_manifest_id,
            "tokenizer_hash": settings.tokenizer_hash,
            "lease_duration_s": settings.lease_duration_s,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
        },
    }


def results_to_json(rows: Sequence[ResultRow]) -> dict[str, Any]:
    return {"schema": RESULTS_SCHEMA_NAME, "count": len(rows), "columns": list(RESULT_COLUMN_NAMES), "results": list(rows)}


def history_to_json(response: pb.GetHistoryResponse) -> dict[str, Any]:
    return {"schema": "autoswarm.history/v1", "merges": [merge_to_json(m) for m in response.merges]}


def hypothesis_to_json(hypothesis: pb.Hypothesis) -> dict[str, Any]:
    return {
        "hypothesis_id": hypothesis.hypothesis_id,
        "title": hypothesis.title,
        "rationale": hypothesis.rationale,
        "state": hypothesis_state_name(hypothesis.state),
        "state_reason": hypothesis.state_reason or None,
        "terminal": hypothesis.state in TERMINAL_HYPOTHESIS_STATES,
        "base_commit": hypothesis.base_commit,
        "merged_commit": hypothesis.merged_commit or None,
        "source": source_name(hypothesis.source),
        "proposer": hypothesis.proposer,
        "priority": hypothesis.priority,
        "constant_changes": dict(sorted(hypothesis.constant_changes.items())),
        "touched_classes": list(hypothesis.touched_classes),
        "created_unix_s": hypothesis.created_unix_s,
        "updated_unix_s": hypothesis.updated_unix_s,
        "patch": hypothesis.patch,
    }


def hypothesis_outcome_to_json(response: pb.GetHypothesisResponse) -> dict[str, Any]:
    """A hypothesis with its results; merged_commits come from the hypothesis itself."""
    hypothesis = response.hypothesis
    merged = (
        {hypothesis.hypothesis_id: hypothesis.merged_commit}
        if hypothesis.state == pb.HYPOTHESIS_STATE_MERGED and hypothesis.merged_commit
        else {}
    )
    return {
        "schema": "autoswarm.hypothesis/v1",
        "hypothesis": hypothesis_to_json(hypothesis),
        "results": [result_row(record, merged) for record in response.results],
    }


def dumps(document: Mapping[str, Any]) -> str:
    """JSON as the CLI prints it: strict (no NaN), keys in the documented order."""
    return json.dumps(document, indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Tables for people
# ---------------------------------------------------------------------------------------------


def fmt_float(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_align: Iterable[int] = ()) -> str:
    """Fixed-width columns separated by two spaces; columns in `right_align` (indices) hold numbers."""
    if not rows:
        return "  ".join(headers) + "\n(none)"
    right = set(right_align)
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def shorten(text: str, width: int) -> str:
    text = _one_line(text)
    return text if len(text) <= width else text[: width - 1] + "…"
