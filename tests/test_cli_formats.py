"""The CLI's pure formats from a known set of results: TSV against upstream's results.tsv, the
Parquet schema round trip, the progress plot, and the JSON shapes agents rely on."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
from pathlib import Path

import pytest

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.cli import formatting as fmt
from coordinator.cli.plot import plot_progress

BASE = "c0ffee1" + "0" * 33  # head the runs were measured on
MERGE_A = "a1b2c3d" + "1" * 33  # hyp_a merged here
MERGE_R = "deadbee" + "2" * 33  # hyp_r merged, then reverted


def _record(
    result_id: str,
    hardware_class: str,
    kind: int,
    val_bpb: float,
    *,
    hypothesis_id: str = "",
    title: str = "",
    status: int = pb.RUN_STATUS_OK,
    peak_memory_mb: float = 512.0,
    baseline: float = 0.0,
    sigma: float = 0.0,
    reported: float = 0.0,
    error: str = "",
    volunteer: str = "vol-1",
    owner: str = "alice",
) -> pb.ResultRecord:
    score = pb.NormalizedScore()
    if baseline:
        delta = baseline - val_bpb
        score = pb.NormalizedScore(
            has_baseline=True, baseline_val_bpb=baseline, delta_bpb=delta, delta_percent=100 * delta / baseline,
            delta_sigma=delta / sigma if sigma else 0.0, class_sigma=sigma, baseline_samples=3,
        )
    return pb.ResultRecord(
        result_id=result_id, lease_id=f"lease-{result_id}", unit_id=f"unit-{result_id}", kind=kind,
        hypothesis_id=hypothesis_id, hardware_class=hardware_class, base_commit=BASE, volunteer_id=volunteer,
        owner=owner, hypothesis_title=title, counts=True, reported_unix_s=1_700_000_000.0 + reported, score=score,
        result=pb.RunResult(
            status=status, val_bpb=val_bpb, peak_memory_mb=peak_memory_mb, num_steps=120, total_tokens=250_000,
            mfu_percent=1.5, training_s=30.0, total_s=41.5, num_params_m=0.8, attention_backend="sdpa", error=error,
        ),
    )


B, C, R = pb.UNIT_KIND_BASELINE, pb.UNIT_KIND_CANDIDATE, pb.UNIT_KIND_REPLICATE


def sample_records() -> list[pb.ResultRecord]:
    """Two classes; hyp_a merged, hyp_r merged then reverted, hyp_b worse, hyp_c and hyp_d failed."""
    cpu = dict(baseline=2.101, sigma=0.002)
    return [
        _record("r01", "cpu", B, 2.100, reported=1),
        _record("r02", "cpu", B, 2.102, reported=2, volunteer="vol-2", owner="bob"),
        _record("r03", "cpu", C, 2.090, hypothesis_id="hyp_a", title="warmdown 0.6", reported=3, **cpu),
        _record("r04", "cpu", R, 2.092, hypothesis_id="hyp_a", title="warmdown 0.6", reported=4,
                volunteer="vol-2", owner="bob", **cpu),
        _record("r05", "cpu", C, 2.105, hypothesis_id="hyp_b", title="embedding lr\t0.8\nsecond line", reported=5, **cpu),
        _record("r06", "cpu", C, 0.0, hypothesis_id="hyp_c", title="double width", status=pb.RUN_STATUS_OOM,
                peak_memory_mb=4000.0, reported=6, error="CUDA out of memory"),
        _record("r07", "cpu", C, 2.099, hypothesis_id="hyp_r", title="seed 137", reported=7, **cpu),
        _record("r08", "rtx3060-12g", B, 1.600, reported=1, peak_memory_mb=9830.4, volunteer="vol-3", owner="carol"),
        _record("r09", "rtx3060-12g", C, 1.580, hypothesis_id="hyp_a", title="warmdown 0.6", reported=2,
                peak_memory_mb=9830.4, volunteer="vol-3", owner="carol", baseline=1.6, sigma=0.005),
        _record("r10", "rtx3060-12g", C, 1.7, hypothesis_id="hyp_d", title="depth 12", status=pb.RUN_STATUS_TIMEOUT,
                reported=3, volunteer="vol-3", owner="carol", error="killed at 2x budget"),
    ]


def sample_merges() -> list[pb.MergeRecord]:
    return [
        pb.MergeRecord(commit=MERGE_R, parent_commit=MERGE_A, hypothesis_id="hyp_r", title="seed 137",
                       delta_bpb_by_class={"cpu": 0.002}, merged_unix_s=1_700_000_100.0,
                       reverted_by="f" * 40, revert_reason="rtx3060-12g got worse"),
        pb.MergeRecord(commit=MERGE_A, parent_commit=BASE, hypothesis_id="hyp_a", title="warmdown 0.6",
                       delta_bpb_by_class={"cpu": 0.010, "rtx3060-12g": 0.02}, merged_unix_s=1_700_000_050.0),
    ]


OK_POINTS = 8  # ok results in sample_records: r01-r05, r07, r08, r09
MERGED_LABELS = 2  # hyp_a on cpu and on rtx3060-12g


# --- rows and the status mapping -----------------------------------------------------------------


def test_chronological_orders_by_report_time_then_id():
    records = sample_records()
    ordered = [r.result_id for r in fmt.chronological(reversed(records))]
    assert ordered == ["r01", "r08", "r02", "r09", "r03", "r10", "r04", "r05", "r06", "r07"]


def test_status_mapping_follows_upstream_keep_discard_crash():
    rows = {r["result_id"]: r for r in fmt.result_rows(sample_records(), sample_merges())}
    assert [rows[f"r{i:02d}"]["status"] for i in range(1, 11)] == [
        "keep", "keep", "keep", "keep", "discard", "crash", "discard", "keep", "keep", "crash",
    ]
    # hyp_r's merge was reverted: its run is a discard, and it has no merged commit.
    assert rows["r07"]["merged_commit"] == "" and rows["r07"]["commit"] == BASE[:7]
    assert rows["r03"]["merged_commit"] == MERGE_A and rows["r03"]["commit"] == "a1b2c3d"
    assert rows["r01"]["description"] == "baseline" and rows["r01"]["hypothesis"] == ""


def test_failures_are_logged_as_upstream_zeros_and_keep_their_measurements():
    rows = {r["result_id"]: r for r in fmt.result_rows(sample_records(), sample_merges())}
    oom = rows["r06"]
    assert (oom["val_bpb"], oom["memory_gb"], oom["status"]) == (0.0, 0.0, "crash")
    assert oom["run_status"] == "oom" and oom["peak_memory_mb"] == 4000.0
    assert oom["description"] == "double width (oom)" and oom["error"] == "CUDA out of memory"
    assert oom["delta_bpb"] is None and oom["delta_sigma"] is None
    timeout = rows["r10"]
    assert timeout["val_bpb"] == 0.0 and timeout["run_status"] == "timeout"


def test_normalized_scores_are_null_without_a_baseline():
    rows = {r["result_id"]: r for r in fmt.result_rows(sample_records(), sample_merges())}
    assert rows["r01"]["delta_bpb"] is None and rows["r01"]["baseline_val_bpb"] is None
    assert rows["r03"]["delta_bpb"] == pytest.approx(0.011)
    assert rows["r03"]["delta_sigma"] == pytest.approx(5.5)
    assert rows["r03"]["delta_percent"] == pytest.approx(100 * 0.011 / 2.101)
    assert rows["r05"]["delta_bpb"] == pytest.approx(-0.004)


# --- TSV -----------------------------------------------------------------------------------------


UPSTREAM_ROW = re.compile(r"^[0-9a-f]{7}\t\d+\.\d{6}\t\d+\.\d\t(keep|discard|crash)\t[^\t\n]*$")


def test_tsv_header_and_rows_keep_upstreams_format_first():
    text = fmt.results_to_tsv(sample_records(), sample_merges())
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 11
    header = lines[0].split("\t")
    assert header[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert header[5:10] == ["class", "volunteer", "owner", "kind", "hypothesis"]
    assert header[10:13] == ["delta_bpb", "delta_percent", "delta_sigma"]
    assert tuple(header) == fmt.RESULT_COLUMN_NAMES
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == len(header)
        assert UPSTREAM_ROW.match("\t".join(cells[:5])), line
    by_id = {line.split("\t")[header.index("result_id")]: line.split("\t") for line in lines[1:]}
    assert by_id["r01"][:5] == ["c0ffee1", "2.100000", "0.5", "keep", "baseline"]
    assert by_id["r06"][:5] == ["c0ffee1", "0.000000", "0.0", "crash", "double width (oom)"]
    assert by_id["r09"][:5] == ["a1b2c3d", "1.580000", "9.6", "keep", "warmdown 0.6"]
    # Tabs and newlines inside a title cannot break a row.
    assert by_id["r05"][4] == "embedding lr 0.8 second line"
    assert by_id["r01"][header.index("delta_bpb")] == ""
    assert by_id["r03"][header.index("delta_bpb")] == "0.011000"
    assert by_id["r03"][header.index("counts")] == "true"


def test_tsv_reads_back_like_upstreams_results_tsv():
    text = fmt.results_to_tsv(sample_records(), sample_merges())
    reader = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    kept = [row for row in reader if row["status"] == "keep"]
    assert min(float(row["val_bpb"]) for row in kept if row["class"] == "cpu") == pytest.approx(2.090)
    assert sum(1 for row in reader if row["status"] == "crash") == 2


def test_empty_results_give_just_the_header():
    assert fmt.results_to_tsv([], []) == "\t".join(fmt.RESULT_COLUMN_NAMES) + "\n"


# --- Parquet -------------------------------------------------------------------------------------


def test_parquet_schema_round_trip(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fmt.result_rows(sample_records(), sample_merges())
    path = tmp_path / "results.parquet"
    fmt.write_parquet(fmt.rows_to_arrow(rows), path)
    table = pq.read_table(path)
    schema = fmt.results_arrow_schema()
    assert table.schema.equals(schema, check_metadata=True)
    assert table.schema.metadata[b"schema"] == fmt.RESULTS_SCHEMA_NAME.encode()
    assert table.schema.names == list(fmt.RESULT_COLUMN_NAMES)
    assert table.schema.field("val_bpb").type == pa.float64()
    assert table.schema.field("num_steps").type == pa.int64()
    assert table.schema.field("counts").type == pa.bool_()
    assert table.schema.field("delta_bpb").nullable and not table.schema.field("commit").nullable
    assert table.schema.field("memory_gb").metadata[b"doc"].startswith(b"peak memory in GB")
    assert table.to_pylist() == rows


def test_parquet_refuses_a_null_in_a_required_column():
    rows = fmt.result_rows(sample_records()[:1], [])
    rows[0]["commit"] = None
    with pytest.raises(ValueError, match="commit"):
        fmt.rows_to_arrow(rows)


# --- the plot ------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_has_expected_size_points_and_labels(tmp_path: Path):
    rows = fmt.result_rows(sample_records(), sample_merges())
    path = tmp_path / "progress.png"
    summary = plot_progress(rows, path, width_px=800, height_px=600)
    assert _png_size(path) == (800, 600)
    assert (summary.classes, summary.points, summary.labels) == (2, OK_POINTS, MERGED_LABELS)
    assert (summary.width_px, summary.height_px) == (800, 600)


def test_plot_default_height_grows_with_classes_and_empty_plot_is_valid(tmp_path: Path):
    rows = fmt.result_rows(sample_records(), sample_merges())
    summary = plot_progress(rows, tmp_path / "p.png", width_px=640)
    assert _png_size(tmp_path / "p.png") == (640, 900)
    assert summary.points == OK_POINTS
    empty = plot_progress([], tmp_path / "empty.png", width_px=300, height_px=200)
    assert _png_size(tmp_path / "empty.png") == (300, 200) and empty.points == 0 and empty.classes == 0
    with pytest.raises(ValueError, match="too small"):
        plot_progress(rows, tmp_path / "tiny.png", width_px=10, height_px=10)
    assert not (tmp_path / "tiny.png").exists()


# --- JSON shapes ---------------------------------------------------------------------------------

MERGE_KEYS = ["commit", "parent_commit", "hypothesis_id", "title", "delta_bpb_by_class", "merged_unix_s",
              "reverted_by", "revert_reason"]


def test_results_json_shape():
    rows = fmt.result_rows(sample_records(), sample_merges())
    document = json.loads(fmt.dumps(fmt.results_to_json(rows)))
    assert list(document) == ["schema", "count", "columns", "results"]
    assert document["schema"] == "autoswarm.results/v1" and document["count"] == 10
    assert document["columns"] == list(fmt.RESULT_COLUMN_NAMES)
    assert all(list(row) == document["columns"] for row in document["results"])
    assert document["results"][0]["delta_bpb"] is None


def test_leaderboard_json_shape_and_normalized_gains():
    response = pb.GetLeaderboardResponse(
        rows=[
            pb.LeaderboardRow(key="cpu", hardware_class="cpu", baseline_val_bpb=2.0, best_val_bpb=1.99,
                              class_sigma=0.002, merged_wins=2, total_gain_bpb=0.02, runs=40, gpu_hours=0.5,
                              failure_rate=0.1),
            pb.LeaderboardRow(key="mps", hardware_class="mps", runs=1, failure_rate=1.0),
        ],
        merges=sample_merges(),
    )
    document = fmt.leaderboard_to_json(response, "class", "")
    assert list(document) == ["schema", "by", "hardware_class", "rows", "merges"]
    assert document["schema"] == "autoswarm.leaderboard/v1" and document["hardware_class"] is None
    cpu, mps = document["rows"]
    assert list(cpu) == ["key", "display_name", "hardware_class", "baseline_val_bpb", "best_val_bpb", "class_sigma",
                         "merged_wins", "total_gain_bpb", "total_gain_percent", "total_gain_sigma", "runs",
                         "gpu_hours", "confirmed_wins", "failure_rate"]
    assert cpu["total_gain_percent"] == pytest.approx(100 * 0.02 / 2.02)
    assert cpu["total_gain_sigma"] == pytest.approx(10.0)
    # Unknown numbers (the contract's zeros) are null, not 0.
    assert mps["baseline_val_bpb"] is None and mps["class_sigma"] is None and mps["total_gain_sigma"] is None
    assert list(document["merges"][0]) == MERGE_KEYS
    assert document["merges"][0]["reverted_by"] == "f" * 40
    assert document["merges"][1]["reverted_by"] is None
    json.loads(fmt.dumps(document))


def test_status_and_history_json_shapes():
    status = pb.GetSwarmStatusResponse(
        head_commit=MERGE_A, queue_depth=3, units_in_flight=2, volunteers_online=4, undecided_results=7,
        classes=[pb.ClassStatus(hardware_class="cpu", volunteers_online=4, units_in_flight=2, baseline_val_bpb=2.0,
                                class_sigma=0.002, baseline_samples=5)],
        recent_merges=sample_merges()[1:],
        settings=pb.SwarmSettings(budget_s=30.0, dataset_name="pydoc", data_manifest_id="m1", tokenizer_hash="t1",
                                  lease_duration_s=90.0, heartbeat_interval_s=10.0),
    )
    document = fmt.status_to_json(status)
    assert list(document) == ["schema", "head_commit", "queue_depth", "units_in_flight", "volunteers_online",
                              "undecided_results", "classes", "recent_merges", "settings"]
    assert document["undecided_results"] == 7
    assert list(document["classes"][0]) == ["hardware_class", "volunteers_online", "units_in_flight",
                                            "baseline_val_bpb", "class_sigma", "baseline_samples"]
    assert list(document["settings"]) == ["budget_s", "dataset_name", "data_manifest_id", "tokenizer_hash",
                                          "lease_duration_s", "heartbeat_interval_s"]
    history = fmt.history_to_json(pb.GetHistoryResponse(merges=sample_merges()))
    assert list(history) == ["schema", "merges"] and [m["hypothesis_id"] for m in history["merges"]] == ["hyp_r", "hyp_a"]


def test_hypothesis_outcome_json_shape_marks_its_own_results_kept_when_merged():
    records = [r for r in sample_records() if r.hypothesis_id == "hyp_a"]
    hypothesis = pb.Hypothesis(hypothesis_id="hyp_a", title="warmdown 0.6", state=pb.HYPOTHESIS_STATE_MERGED,
                               merged_commit=MERGE_A, base_commit=BASE, source=pb.HYPOTHESIS_SOURCE_AGENT,
                               constant_changes={"WARMDOWN_RATIO": "0.6"})
    document = fmt.hypothesis_outcome_to_json(pb.GetHypothesisResponse(hypothesis=hypothesis, results=records))
    assert list(document) == ["schema", "hypothesis", "results"]
    assert list(document["hypothesis"]) == [
        "hypothesis_id", "title", "rationale", "state", "state_reason", "terminal", "base_commit", "merged_commit",
        "source", "proposer", "priority", "constant_changes", "touched_classes", "created_unix_s",
        "updated_unix_s", "patch",
    ]
    assert document["hypothesis"]["state"] == "merged" and document["hypothesis"]["terminal"] is True
    assert document["hypothesis"]["source"] == "agent"
    assert {row["status"] for row in document["results"]} == {"keep"}
    assert {row["commit"] for row in document["results"]} == {"a1b2c3d"}


def test_render_table_aligns_columns():
    text = fmt.render_table(["name", "value"], [["a", "1.5"], ["long-name", "12.25"]], right_align=[1])
    lines = text.splitlines()
    assert lines[0] == "name       value"
    assert lines[2] == "a            1.5"
    assert lines[3] == "long-name  12.25"
    assert fmt.render_table(["x"], []).endswith("(none)")
