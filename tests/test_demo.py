"""End to end: `autoswarm demo` runs a real coordinator and real CPU volunteers (real training on the
pydoc corpus, tiny budget) and prints the documented JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_short_demo_reports_from_every_volunteer(tmp_path):
    exe = Path(sys.executable).parent / "autoswarm"
    plot = tmp_path / "progress.png"
    result = subprocess.run(
        [str(exe), "demo", "--volunteers", "2", "--budget-s", "2", "--runs", "4", "--json",
         "--dir", str(tmp_path / "demo"), "--plot", str(plot), "--timeout-s", "400"],
        capture_output=True, text=True, timeout=480,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(result.stdout)
    assert document["schema"] == "autoswarm.demo/v1"
    assert document["runs_reported"] >= 4
    assert len(document["volunteers"]) == 2  # every volunteer reported at least one result
    assert isinstance(document["merged"], list)
    for merge in document["merged"]:
        assert set(merge) >= {"hypothesis", "commit", "class", "delta_bpb"}
    cpu = document["classes"]["cpu"]
    assert set(cpu) >= {"baseline_val_bpb", "best_val_bpb", "sigma"}
    assert 0.5 < cpu["best_val_bpb"] < 12.0  # bits per byte of a briefly trained tiny model
    assert {row["key"] for row in document["leaderboard"]} == set(document["volunteers"])
    assert re.fullmatch(r"[0-9a-f]{40}", document["head_commit"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 1 <= document["plot"]["points"] <= document["runs_reported"]  # one dot per ok result
    # The global branch in the demo dir tells the same story.
    log = subprocess.run(["git", "--git-dir", str(tmp_path / "demo" / "coordinator" / "branch.git"), "log",
                          "--format=%H", "global"], capture_output=True, text=True, check=True).stdout.split()
    assert log[0] == document["head_commit"]
