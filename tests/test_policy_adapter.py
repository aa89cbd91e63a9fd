"""The policy's window onto the store (coordinator/service/policy_adapter.py): how often it reads
new results, on a real SQLite store."""

from __future__ import annotations

from coordinator.service.policy_adapter import StoreView
from coordinator.store.sqlite_store import SqliteStore
from coordinator.store.types import NormalizedScore, Role, RunMetrics, RunStatus, UnitKind, WorkUnit


class _CountingStore(SqliteStore):
    reads = 0

    def list_results(self, *args, **kwargs):
        self.reads += 1
        return super().list_results(*args, **kwargs)


def _report(store: SqliteStore, index: int) -> None:
    volunteer = store.create_principal(Role.VOLUNTEER, f"o{index}", "v", f"tok-{index}", "cpu", "{}")
    store.enqueue_unit(WorkUnit(f"u{index}", UnitKind.BASELINE, "cpu", "c0", "x = 1\n", "{}"))
    _, lease = store.lease_unit(volunteer.principal_id, volunteer.owner, "cpu", 100.0)
    metrics = RunMetrics(status=RunStatus.OK, val_bpb=1.0 + index / 1000)
    store.record_result(lease.lease_id, volunteer.principal_id, metrics, NormalizedScore(), f"res{index}")


def test_nested_decisions_share_the_enclosing_blocks_one_read(tmp_path):
    store = _CountingStore(str(tmp_path / "s.sqlite"))
    view = StoreView(store, branch=None)  # type: ignore[arg-type]  # results need no branch
    _report(store, 0)
    with view.one_read_of_results():
        for _ in range(3):  # three decisions of one batch
            with view.one_read_of_results():
                assert len(view.counting_results(hardware_class="cpu")) == 1
        _report(store, 1)  # reported during the batch: the next batch's
        with view.one_read_of_results():
            assert len(view.counting_results()) == 1
    assert store.reads == 1
    with view.one_read_of_results():  # the next batch reads what came since
        assert [r.result_id for r in view.counting_results()] == ["res0", "res1"]
    assert store.reads == 2


def test_each_block_reads_once_without_an_enclosing_one(tmp_path):
    store = _CountingStore(str(tmp_path / "s.sqlite"))
    view = StoreView(store, branch=None)  # type: ignore[arg-type]
    _report(store, 0)
    for expected_reads in (1, 2):
        with view.one_read_of_results():
            view.counting_results()
            view.counting_results(hardware_class="cpu")
        assert store.reads == expected_reads


def test_forgetting_results_inside_a_block_reads_everything_again(tmp_path):
    store = _CountingStore(str(tmp_path / "s.sqlite"))
    view = StoreView(store, branch=None)  # type: ignore[arg-type]
    _report(store, 0)
    _report(store, 1)
    with view.one_read_of_results():
        assert len(view.counting_results()) == 2
        view.forget_results()  # a revocation: cached results are stale
        with view.one_read_of_results():
            assert len(view.counting_results()) == 2  # read again, not an empty cache
    assert store.reads == 2
