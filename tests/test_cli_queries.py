"""`autoswarm leaderboard | status | results | history | best | propose`: argument parsing, and the
commands end to end over real gRPC.

Most command tests talk to a small in-test gRPC server that implements the v1 contract with canned
answers (real sockets, real client, real CLI), so they do not depend on the coordinator's state
machine. One test runs `autoswarm results --json` against a real coordinator process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from autoswarm.v1 import swarm_pb2 as pb
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.cli import formatting as fmt
from coordinator.cli import queries
from tests.test_cli_formats import MERGE_A, _png_size, sample_merges, sample_records

REPO = Path(__file__).resolve().parent.parent
TOKEN = "secret-token"
PAGE_SIZE = 4  # the stub pages results this small so the client has to follow pages


# --- pure helpers --------------------------------------------------------------------------------


def test_parse_since_accepts_epoch_durations_and_iso_dates():
    now = 1_700_000_000.0
    assert queries.parse_since("1699990000", now) == 1_699_990_000.0
    assert queries.parse_since("90s", now) == now - 90
    assert queries.parse_since("15m", now) == now - 900
    assert queries.parse_since("2h", now) == now - 7200
    assert queries.parse_since("1.5d", now) == now - 1.5 * 86400
    assert queries.parse_since("1w", now) == now - 604800
    assert queries.parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    assert queries.parse_since("2023-11-14T23:13:20+01:00", now) == 1_700_000_000.0
    for bad in ("yesterday", "-5", "3x", ""):
        with pytest.raises(queries.UsageError, match="--since"):
            queries.parse_since(bad, now)


def test_parse_constant_assignments_wants_upper_case_names_and_literals():
    assert queries.parse_constant_assignments(["DEPTH=6", "WINDOW_PATTERN='L'", " ADAM_BETAS = (0.9, 0.95) "]) == {
        "DEPTH": "6", "WINDOW_PATTERN": "'L'", "ADAM_BETAS": "(0.9, 0.95)",
    }
    cases = {
        "DEPTH": "NAME=VALUE",
        "depth=6": "UPPER_CASE",
        "TOTAL_BATCH_SIZE=2**17": "not a Python literal",
        "WINDOW_PATTERN=L": "not a Python literal",
        "DEPTH=": "NAME=VALUE",
    }
    for item, message in cases.items():
        with pytest.raises(queries.UsageError, match=re.escape(message)):
            queries.parse_constant_assignments([item])
    with pytest.raises(queries.UsageError, match="twice"):
        queries.parse_constant_assignments(["DEPTH=6", "DEPTH=4"])


def test_resolve_token_precedence(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"AUTOSWARM_TOKEN": "from-env"}
    assert queries.resolve_token("flag", None, env) == "flag"
    assert queries.resolve_token(None, token_file, env) == "from-file"
    assert queries.resolve_token(None, None, env) == "from-env"
    assert queries.resolve_token(None, None, {"AUTOSWARM_TOKEN_FILE": str(token_file)}) == "from-file"
    assert queries.resolve_token(None, None, {**env, "AUTOSWARM_TOKEN_FILE": str(token_file)}) == "from-env"
    with pytest.raises(queries.UsageError, match="not both"):
        queries.resolve_token("flag", token_file, env)
    with pytest.raises(queries.UsageError, match="no token"):
        queries.resolve_token(None, None, {})
    with pytest.raises(queries.UsageError, match="cannot read"):
        queries.resolve_token(None, tmp_path / "missing", env)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(queries.UsageError, match="empty"):
        queries.resolve_token(None, tmp_path / "empty", env)


def test_parse_args_defaults_and_checks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AUTOSWARM_COORDINATOR", raising=False)
    args = queries.parse_args(["leaderboard"])
    assert (args.coordinator, args.by, args.hardware_class, args.json) == ("127.0.0.1:50051", "class", "", False)
    monkeypatch.setenv("AUTOSWARM_COORDINATOR", "swarm.example:443")
    args = queries.parse_args(["results", "--class", "cpu", "--status", "oom", "--since", "1h", "--json"])
    assert (args.coordinator, args.hardware_class, args.status, args.json) == ("swarm.example:443", "cpu", "oom", True)
    assert abs(args.since_unix_s - (time.time() - 3600)) < 60
    args = queries.parse_args(["propose", "--title", "t", "--set", "DEPTH=6", "--set", "MATRIX_LR=0.05"])
    assert args.constant_changes == {"DEPTH": "6", "MATRIX_LR": "0.05"} and not args.wait
    assert queries.parse_args(["propose", "--follow", "hyp_1"]).wait is True
    usage_errors = [
        (["propose", "--set", "DEPTH=6"], "--title"),
        (["propose", "--title", "t"], "--patch FILE or --set"),
        (["propose", "--follow", "h", "--title", "t"], "--follow"),
        (["propose", "--title", "t", "--set", "DEPTH=6", "--poll-s", "0"], "--poll-s"),
        (["results", "--tsv", "-", "--json"], "stdout"),
        (["history", "--limit", "0"], "--limit"),
        (["best", "--out", "-", "--json"], "--json"),
        (["status", "--coordinator", "host:1\nhost:2"], "HOST:PORT"),
        (["status", "--coordinator", " "], "HOST:PORT"),
    ]
    for argv, message in usage_errors:
        with pytest.raises(queries.UsageError, match=re.escape(message)):
            queries.parse_args(argv)
    # argparse itself refuses a patch together with constants, and unknown choices.
    for argv in (["propose", "--title", "t", "--patch", "p.diff", "--set", "DEPTH=6"],
                 ["leaderboard", "--by", "gpu"], ["results", "--status", "keep"], ["best"]):
        with pytest.raises(SystemExit):
            queries.parse_args(argv)


def test_follow_hypothesis_reports_changes_and_stops_at_an_outcome():
    states = [pb.HYPOTHESIS_STATE_QUEUED, pb.HYPOTHESIS_STATE_QUEUED, pb.HYPOTHESIS_STATE_PROMISING,
              pb.HYPOTHESIS_STATE_REJECTED]
    answers = iter(pb.GetHypothesisResponse(hypothesis=pb.Hypothesis(hypothesis_id="h", state=s)) for s in states)
    seen, sleeps = [], []
    final = queries.follow_hypothesis(
        lambda: next(answers), lambda r: seen.append(r.hypothesis.state), poll_s=5.0, timeout_s=None,
        sleep=sleeps.append,
    )
    assert final.hypothesis.state == pb.HYPOTHESIS_STATE_REJECTED
    assert seen == [pb.HYPOTHESIS_STATE_QUEUED, pb.HYPOTHESIS_STATE_PROMISING, pb.HYPOTHESIS_STATE_REJECTED]
    assert sleeps == [5.0, 5.0, 5.0]


def test_follow_hypothesis_times_out_with_the_last_answer():
    now = [0.0]
    queued = pb.GetHypothesisResponse(hypothesis=pb.Hypothesis(hypothesis_id="h", state=pb.HYPOTHESIS_STATE_QUEUED))

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(queries.WaitTimeout) as caught:
        queries.follow_hypothesis(lambda: queued, lambda r: None, poll_s=10.0, timeout_s=35.0, sleep=sleep,
                                  clock=lambda: now[0])
    assert caught.value.last is queued and now[0] == 30.0


# --- a stub coordinator speaking the v1 contract ---------------------------------------------------


class StubCoordinator(pb_grpc.CoordinatorServicer):
    """Canned answers from tests/test_cli_formats.py's sample set; records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []
        self.hypothesis_polls = 0

    def _auth(self, context: grpc.ServicerContext, name: str, request: object) -> None:
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "UnauthenticatedError: unknown token")
        self.requests.append((name, request))

    def ListResults(self, request, context):
        self._auth(context, "ListResults", request)
        records = [r for r in sample_records() if not request.hardware_class or r.hardware_class == request.hardware_class]
        start = int(request.page_token or 0)
        page = records[start:start + PAGE_SIZE]
        more = start + PAGE_SIZE < len(records)
        return pb.ListResultsResponse(results=page, next_page_token=str(start + PAGE_SIZE) if more else "")

    def GetHistory(self, request, context):
        self._auth(context, "GetHistory", request)
        return pb.GetHistoryResponse(merges=sample_merges()[: request.limit or 100])

    def GetLeaderboard(self, request, context):
        self._auth(context, "GetLeaderboard", request)
        row = pb.LeaderboardRow(key="cpu", hardware_class="cpu", baseline_val_bpb=2.09, best_val_bpb=2.09,
                                class_sigma=0.002, merged_wins=1, total_gain_bpb=0.01, runs=7, gpu_hours=0.08,
                                failure_rate=1 / 7)
        return pb.GetLeaderboardResponse(rows=[row], merges=sample_merges())

    def GetSwarmStatus(self, request, context):
        self._auth(context, "GetSwarmStatus", request)
        return pb.GetSwarmStatusResponse(
            head_commit=MERGE_A, queue_depth=5, units_in_flight=2, volunteers_online=3,
            classes=[pb.ClassStatus(hardware_class="cpu", volunteers_online=3, units_in_flight=2,
                                    baseline_val_bpb=2.09, class_sigma=0.002, baseline_samples=4)],
            recent_merges=sample_merges(), settings=pb.SwarmSettings(budget_s=30.0, dataset_name="pydoc"),
        )

    def GetBest(self, request, context):
        self._auth(context, "GetBest", request)
        if request.hardware_class == "broken":
            context.abort(grpc.StatusCode.INTERNAL, "internal error: ImportError")
        depth = 2 if request.hardware_class == "cpu" else 8
        return pb.GetBestResponse(commit=MERGE_A, train_py=f"DEPTH = {depth}\n", profiles_json='{"version": 1}\n',
                                  val_bpb=2.09 if request.hardware_class else 0.0)

    def SubmitHypothesis(self, request, context):
        self._auth(context, "SubmitHypothesis", request)
        if request.title == "duplicate":
            context.abort(grpc.StatusCode.ALREADY_EXISTS, "DuplicateError: same change original=hyp_old")
        return pb.SubmitHypothesisResponse(hypothesis_id="hyp_new", state=pb.HYPOTHESIS_STATE_QUEUED)

    def GetHypothesis(self, request, context):
        self._auth(context, "GetHypothesis", request)
        if request.hypothesis_id != "hyp_new":
            context.abort(grpc.StatusCode.NOT_FOUND, f"NotFoundError: no hypothesis {request.hypothesis_id}")
        self.hypothesis_polls += 1
        states = [pb.HYPOTHESIS_STATE_QUEUED, pb.HYPOTHESIS_STATE_PROMISING, pb.HYPOTHESIS_STATE_MERGED]
        state = states[min(self.hypothesis_polls - 1, len(states) - 1)]
        results = [r for r in sample_records() if r.hypothesis_id == "hyp_a"][: self.hypothesis_polls]
        for record in results:
            record.hypothesis_id = "hyp_new"
        hypothesis = pb.Hypothesis(hypothesis_id="hyp_new", title="warmdown 0.6", state=state,
                                   merged_commit=MERGE_A if state == pb.HYPOTHESIS_STATE_MERGED else "")
        return pb.GetHypothesisResponse(hypothesis=hypothesis, results=results)


@pytest.fixture
def stub() -> Iterator[tuple[StubCoordinator, str]]:
    servicer = StubCoordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def run_cli(capsys: pytest.CaptureFixture[str], address: str, *argv: str, token: str = TOKEN) -> tuple[int, str, str]:
    command, rest = argv[0], list(argv[1:])
    code = queries.main([command, "--coordinator", address, "--token", token, *rest])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_results_json_follows_pages_and_marks_keep_discard_crash(stub, capsys):
    servicer, address = stub
    code, out, _ = run_cli(capsys, address, "results", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["schema"] == "autoswarm.results/v1" and document["count"] == 10
    assert [r["status"] for r in document["results"]].count("crash") == 2
    assert sum(1 for name, _ in servicer.requests if name == "ListResults") == 3  # 10 results, pages of 4


def test_results_filters_tsv_and_parquet_files(stub, capsys, tmp_path: Path):
    import pyarrow.parquet as pq

    servicer, address = stub
    tsv, parquet = tmp_path / "results.tsv", tmp_path / "results.parquet"
    code, out, err = run_cli(capsys, address, "results", "--class", "rtx3060-12g", "--status", "ok",
                             "--since", "1700000000", "--tsv", str(tsv), "--parquet", str(parquet))
    assert code == 0 and out == "" and f"wrote 3 results to {tsv}" in err
    request = next(r for name, r in servicer.requests if name == "ListResults")
    assert (request.hardware_class, request.status, request.since_unix_s) == ("rtx3060-12g", pb.RUN_STATUS_OK, 1.7e9)
    lines = tsv.read_text().splitlines()
    assert lines[0].startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\tclass\t")
    assert [line.split("\t")[3] for line in lines[1:]] == ["keep", "keep", "crash"]  # reported in this order
    table = pq.read_table(parquet)
    assert table.num_rows == 3 and table.schema.equals(fmt.results_arrow_schema(), check_metadata=True)
    code, out, _ = run_cli(capsys, address, "results", "--tsv", "-")
    assert code == 0 and out == fmt.results_to_tsv(fmt.chronological(sample_records()), sample_merges())
    reported = [float(line.split("\t")[fmt.RESULT_COLUMN_NAMES.index("reported_unix_s")]) for line in out.splitlines()[1:]]
    assert reported == sorted(reported) and len(reported) == 10


def test_results_table_for_people(stub, capsys):
    _, address = stub
    code, out, _ = run_cli(capsys, address, "results")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["commit", "class", "kind", "status", "val_bpb", "delta_bpb",
                                              "delta_sigma", "volunteer", "description"]
    assert len(lines) == 2 + 10 and "double width (oom)" in out


def test_leaderboard_and_status(stub, capsys):
    servicer, address = stub
    code, out, _ = run_cli(capsys, address, "leaderboard", "--by", "owner", "--class", "cpu", "--json")
    document = json.loads(out)
    assert code == 0 and document["by"] == "owner" and document["hardware_class"] == "cpu"
    request = next(r for name, r in servicer.requests if name == "GetLeaderboard")
    assert (request.by, request.hardware_class) == (pb.GetLeaderboardRequest.BY_OWNER, "cpu")
    code, out, _ = run_cli(capsys, address, "leaderboard")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["class", "baseline", "best", "sigma"]
    assert "merged wins" in out and "warmdown 0.6" in out and "seed 137" not in out  # reverted merges left out
    code, out, _ = run_cli(capsys, address, "status", "--json")
    document = json.loads(out)
    assert code == 0 and document["queue_depth"] == 5 and document["classes"][0]["baseline_samples"] == 4
    code, out, _ = run_cli(capsys, address, "status")
    assert code == 0 and "queue 5" in out and "reverted: rtx3060-12g got worse" in out


def test_history_with_plot(stub, capsys, tmp_path: Path):
    _, address = stub
    png = tmp_path / "progress.png"
    code, out, _ = run_cli(capsys, address, "history", "--json", "--plot", str(png), "--plot-width-px", "700",
                           "--plot-height-px", "500")
    document = json.loads(out)
    assert code == 0 and list(document) == ["schema", "merges", "plot"]
    assert document["plot"] == {"path": str(png), "classes": 2, "points": 8, "labels": 2, "width_px": 700,
                                "height_px": 500}
    assert _png_size(png) == (700, 500)
    code, out, _ = run_cli(capsys, address, "history", "--limit", "1")
    assert code == 0 and "seed 137" in out and "warmdown" not in out


def test_best_writes_train_py_with_a_class_profile(stub, capsys, tmp_path: Path):
    servicer, address = stub
    out_path, profiles = tmp_path / "train.py", tmp_path / "profiles.json"
    code, out, _ = run_cli(capsys, address, "best", "--class", "cpu", "--out", str(out_path), "--profiles-out",
                           str(profiles), "--json")
    assert code == 0 and out_path.read_text() == "DEPTH = 2\n" and profiles.read_text() == '{"version": 1}\n'
    assert json.loads(out) == {"schema": "autoswarm.best/v1", "commit": MERGE_A, "hardware_class": "cpu",
                               "val_bpb": 2.09, "out": str(out_path), "bytes": 10, "profiles_out": str(profiles)}
    code, out, _ = run_cli(capsys, address, "best", "--out", "-")
    assert code == 0 and out == "DEPTH = 8\n"


def test_propose_prints_the_id_and_sends_the_change(stub, capsys, tmp_path: Path):
    servicer, address = stub
    code, out, _ = run_cli(capsys, address, "propose", "--title", "warmdown 0.6", "--rationale", "longer decay",
                           "--set", "WARMDOWN_RATIO=0.6", "--source", "agent")
    assert code == 0 and out == "hyp_new queued\n"
    request = next(r for name, r in servicer.requests if name == "SubmitHypothesis")
    assert dict(request.constant_changes) == {"WARMDOWN_RATIO": "0.6"} and request.patch == ""
    assert request.source == pb.HYPOTHESIS_SOURCE_AGENT and request.rationale == "longer decay"
    patch = tmp_path / "change.diff"
    patch.write_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-DEPTH = 8\n+DEPTH = 6\n")
    code, out, _ = run_cli(capsys, address, "propose", "--title", "depth 6", "--patch", str(patch), "--base", "abc",
                           "--json")
    assert code == 0 and json.loads(out) == {"schema": "autoswarm.proposal/v1", "hypothesis_id": "hyp_new",
                                             "state": "queued"}
    request = [r for name, r in servicer.requests if name == "SubmitHypothesis"][-1]
    assert request.patch == patch.read_text() and request.base_commit == "abc"


def test_propose_wait_follows_to_the_outcome(stub, capsys):
    servicer, address = stub
    code, out, _ = run_cli(capsys, address, "propose", "--title", "warmdown 0.6", "--set", "WARMDOWN_RATIO=0.6",
                           "--wait", "--poll-s", "0.01")
    assert code == 0
    assert "hyp_new: queued" in out and "hyp_new: promising" in out and "hyp_new: merged" in out
    assert out.rstrip().endswith(f"outcome: merged as {MERGE_A[:12]}")
    assert out.count("cpu candidate by vol-1: val_bpb 2.090000") == 1  # each result shown once, when it arrives
    servicer.hypothesis_polls = 0
    code, out, _ = run_cli(capsys, address, "propose", "--follow", "hyp_new", "--poll-s", "0.01", "--json")
    document = json.loads(out)
    assert code == 0 and document["hypothesis"]["state"] == "merged" and document["hypothesis"]["terminal"]
    assert [r["status"] for r in document["results"]] == ["keep", "keep", "keep"]


def test_propose_wait_timeout_exits_3_with_the_latest_state(stub, capsys):
    servicer, address = stub
    code, out, err = run_cli(capsys, address, "propose", "--follow", "hyp_new", "--poll-s", "0.5",
                             "--wait-timeout-s", "0.1", "--json")
    assert code == queries.ExitCode.WAIT_TIMEOUT
    assert json.loads(out)["hypothesis"]["state"] == "queued"
    assert "propose --follow hyp_new" in err


def test_errors_are_typed_with_exit_codes(stub, capsys, monkeypatch: pytest.MonkeyPatch):
    _, address = stub
    code, out, err = run_cli(capsys, address, "status", "--json", token="wrong")
    assert code == 1 and json.loads(out)["error"]["type"] == "UnauthenticatedError"
    code, out, _ = run_cli(capsys, address, "propose", "--title", "duplicate", "--set", "DEPTH=6", "--json")
    assert code == 1 and json.loads(out) == {"schema": "autoswarm.error/v1",
                                             "error": {"type": "DuplicateError", "message": "same change"}}
    code, out, _ = run_cli(capsys, address, "best", "--class", "broken", "--out", "t.py", "--json")
    assert code == 1 and json.loads(out)["error"] == {"type": "RpcInternal", "message": "internal error: ImportError"}
    code, _, err = run_cli(capsys, address, "propose", "--follow", "hyp_missing")
    assert code == 1 and "NotFoundError: no hypothesis hyp_missing" in err
    code, _, err = run_cli(capsys, address, "propose", "--title", "t", "--patch", "/nonexistent.diff")
    assert code == 2 and "cannot read --patch" in err
    monkeypatch.delenv("AUTOSWARM_TOKEN", raising=False)
    code = queries.main(["status", "--coordinator", address, "--json"])
    out = capsys.readouterr().out
    assert code == 2 and "no token" in json.loads(out)["error"]["message"]


def test_unreachable_coordinator_is_a_clear_error_and_no_torch_is_imported(tmp_path: Path):
    script = (
        "import sys, json\n"
        "from coordinator.cli import queries\n"
        "code = queries.main(['status', '--coordinator', '127.0.0.1:1', '--token', 't', '--timeout-s', '2', '--json'])\n"
        "print('torch' in sys.modules, 'matplotlib' in sys.modules, 'pyarrow' in sys.modules, code)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "False False False 1", done.stdout + done.stderr
    assert json.loads("\n".join(lines[:-1]))["error"]["type"] == "CoordinatorUnavailable"


# --- against a real coordinator process ----------------------------------------------------------

COORDINATOR_START_S = 30.0


def _start_coordinator(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `autoswarm coordinator serve` on a free port; skip (with the reason) if it cannot start."""
    autoswarm = REPO / ".venv" / "bin" / "autoswarm"
    if not autoswarm.exists():
        pytest.skip(f"{autoswarm} is not installed")
    process = subprocess.Popen(
        [str(autoswarm), "coordinator", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
         "--dataset", "pydoc", "--no-proposer"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"listening on (\S+)", line)
            if match and not found:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + COORDINATOR_START_S
    while time.monotonic() < deadline and not found and process.poll() is None:
        time.sleep(0.1)
    if not found:
        process.kill()
        process.wait()
        tail = "".join(lines[-5:]).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"the coordinator does not start yet (coordinator/server.py): {tail[0]}")
    return process, found[0]


@pytest.mark.slow
def test_results_json_against_a_real_coordinator():
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "coordinator"
        process, address = _start_coordinator(data_dir)
        try:
            token = (data_dir / "admin.token").read_text().strip()
            env = {**os.environ, "AUTOSWARM_TOKEN": token, "AUTOSWARM_COORDINATOR": address}
            autoswarm = str(REPO / ".venv" / "bin" / "autoswarm")
            done = subprocess.run([autoswarm, "results", "--json"], env=env, capture_output=True, text=True,
                                  timeout=60, cwd=tmp)
            assert done.returncode == 0, done.stderr
            document = json.loads(done.stdout)
            assert document["schema"] == "autoswarm.results/v1" and document["count"] == len(document["results"])
            assert document["columns"] == list(fmt.RESULT_COLUMN_NAMES)
            done = subprocess.run([autoswarm, "status", "--json"], env=env, capture_output=True, text=True,
                                  timeout=60, cwd=tmp)
            assert done.returncode == 0, done.stderr
            status = json.loads(done.stdout)
            assert status["schema"] == "autoswarm.status/v1" and len(status["head_commit"]) >= 7
            done = subprocess.run([autoswarm, "status", "--json", "--token", "not-a-token"], env=env,
                                  capture_output=True, text=True, timeout=60, cwd=tmp)
            assert done.returncode == 1 and json.loads(done.stdout)["error"]["type"] == "UnauthenticatedError"

            def cli(*argv: str) -> tuple[int, dict]:
                done = subprocess.run([autoswarm, *argv], env=env, capture_output=True, text=True, timeout=60, cwd=tmp)
                return done.returncode, json.loads(done.stdout)

            code, best = cli("best", "--out", str(Path(tmp) / "train.py"), "--json")
            assert code == 0 and best["commit"] == status["head_commit"]
            assert "WARMDOWN_RATIO" in (Path(tmp) / "train.py").read_text()
            code, proposal = cli("propose", "--title", "warmdown 0.6", "--set", "WARMDOWN_RATIO=0.6", "--source",
                                 "agent", "--json")
            assert code == 0 and proposal["state"] == "queued"
            code, followed = cli("propose", "--follow", proposal["hypothesis_id"], "--wait-timeout-s", "0", "--json")
            assert code == queries.ExitCode.WAIT_TIMEOUT and followed["hypothesis"]["source"] == "agent"
            assert followed["hypothesis"]["constant_changes"] == {"WARMDOWN_RATIO": "0.6"}
            code, error = cli("propose", "--title", "again", "--set", "WARMDOWN_RATIO=0.6", "--json")
            assert code == 1 and error["error"]["type"] == "DuplicateError"
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_program_md_uses_only_flags_the_cli_has():
    text = (REPO / "program.md").read_text()
    parser = queries.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = {flag for sub in subparsers.choices.values() for action in sub._actions for flag in action.option_strings}
    other_commands = {"--role", "--name", "--owner", "--budget-s"}  # `coordinator token`, `train`
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    assert used - known - other_commands == set()
    for command in queries.COMMANDS:
        assert f"autoswarm {command}" in text
