"""Read-only queries behind the leaderboard, status, results, history and best RPCs."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.service import convert
from coordinator.store.base import read_all_results
from coordinator.store.types import HypothesisState, ResultFilter, RunStatus, UnitState

if TYPE_CHECKING:
    from coordinator.service.core import CoordinatorCore

ONLINE_WINDOW_S = 900.0  # a volunteer seen within this window counts as online


def get_hypothesis(core: CoordinatorCore, hypothesis_id: str) -> pb.GetHypothesisResponse:
    hypothesis = core.store.get_hypothesis(hypothesis_id)
    results = core.store.list_results(ResultFilter(hypothesis_id=hypothesis_id), limit=1000)
    return pb.GetHypothesisResponse(
        hypothesis=convert.hypothesis_to_pb(hypothesis),
        results=[convert.result_to_pb(r, hypothesis.title) for r in results],
    )


def list_hypotheses(
    core: CoordinatorCore, states: list[HypothesisState], page_size: int, page_token: str
) -> pb.ListHypothesesResponse:
    items = core.store.list_hypotheses(states=states, limit=page_size + 1, after=page_token)
    next_token = items[page_size - 1].hypothesis_id if len(items) > page_size else ""
    return pb.ListHypothesesResponse(
        hypotheses=[convert.hypothesis_to_pb(h) for h in items[:page_size]], next_page_token=next_token
    )


def get_best(core: CoordinatorCore, hardware_class: str) -> pb.GetBestResponse:
    head = core.branch.head()
    files = core.branch.files_at(head)
    train_py = files["train.py"]
    val_bpb = 0.0
    if hardware_class:
        from trainer.constants import rewrite_constants
        from trainer.profiles import get_profile

        profile = get_profile(hardware_class, files.get("profiles.json"))
        train_py = rewrite_constants(train_py, profile.constants)
        stats = core.store.get_class_stats(hardware_class, head)
        val_bpb = stats.mean_val_bpb if stats else 0.0
    return pb.GetBestResponse(commit=head, train_py=train_py, profiles_json=files.get("profiles.json", ""), val_bpb=val_bpb)


def list_results(
    core: CoordinatorCore, request: pb.ListResultsRequest, status: RunStatus | None, page_size: int
) -> pb.ListResultsResponse:
    result_filter = ResultFilter(
        hardware_class=request.hardware_class,
        status=status,
        since_s=request.since_unix_s,
        hypothesis_id=request.hypothesis_id,
        volunteer_id=request.volunteer_id,
    )
    items = core.store.list_results(result_filter, limit=page_size + 1, after=request.page_token)
    titles = _titles(core, {r.hypothesis_id for r in items if r.hypothesis_id})
    next_token = items[page_size - 1].result_id if len(items) > page_size else ""
    return pb.ListResultsResponse(
        results=[convert.result_to_pb(r, titles.get(r.hypothesis_id, "")) for r in items[:page_size]],
        next_page_token=next_token,
    )


def _titles(core: CoordinatorCore, hypothesis_ids: set[str]) -> dict[str, str]:
    titles = {}
    for hypothesis_id in hypothesis_ids:
        try:
            titles[hypothesis_id] = core.store.get_hypothesis(hypothesis_id).title
        except Exception:
            continue
    return titles


def _all_results(core: CoordinatorCore) -> list[Any]:
    return read_all_results(core.store)


def leaderboard(core: CoordinatorCore, request: pb.GetLeaderboardRequest) -> pb.GetLeaderboardResponse:
    by = request.by or pb.GetLeaderboardRequest.BY_CLASS
    head = core.branch.head()
    results = [r for r in _all_results(core) if r.counts]
    if request.hardware_class:
        results = [r for r in results if r.hardware_class == request.hardware_class]
    merges = core.store.list_merges(limit=1000)
    live_merges = [m for m in merges if not m.reverted_by]
    merged_ids = {m.hypothesis_id for m in live_merges}
    rows: list[pb.LeaderboardRow] = []
    if by == pb.GetLeaderboardRequest.BY_CLASS:
        classes = sorted({r.hardware_class for r in results} | {s.hardware_class for s in core.store.list_class_stats(head)})
        for hardware_class in classes:
            class_results = [r for r in results if r.hardware_class == hardware_class]
            ok = [r.metrics.val_bpb for r in class_results if r.metrics.status == RunStatus.OK]
            stats = core.store.get_class_stats(hardware_class, head)
            wins = [m for m in live_merges if hardware_class in m.delta_bpb_by_class]
            rows.append(
                pb.LeaderboardRow(
                    key=hardware_class,
                    hardware_class=hardware_class,
                    baseline_val_bpb=stats.mean_val_bpb if stats else 0.0,
                    best_val_bpb=min(ok) if ok else 0.0,
                    class_sigma=stats.sigma if stats else 0.0,
                    merged_wins=len(wins),
                    total_gain_bpb=sum(m.delta_bpb_by_class[hardware_class] for m in wins),
                    runs=len(class_results),
                    gpu_hours=sum(r.metrics.total_s for r in class_results) / 3600.0,
                    failure_rate=_failure_rate(class_results),
                )
            )
    else:
        key_of = (lambda r: r.volunteer_id) if by == pb.GetLeaderboardRequest.BY_VOLUNTEER else (lambda r: r.owner)
        groups: dict[str, list[Any]] = defaultdict(list)
        for record in results:
            groups[key_of(record)].append(record)
        names = {}
        if by == pb.GetLeaderboardRequest.BY_VOLUNTEER:
            names = {p.principal_id: p.display_name for p in core.store.list_principals()}
        for key, group in groups.items():
            found = {r.hypothesis_id for r in group if r.hypothesis_id in merged_ids and r.metrics.status == RunStatus.OK}
            classes = sorted({r.hardware_class for r in group})
            ok = [r.metrics.val_bpb for r in group if r.metrics.status == RunStatus.OK]
            rows.append(
                pb.LeaderboardRow(
                    key=key,
                    hardware_class=",".join(classes),
                    best_val_bpb=min(ok) if ok else 0.0,
                    runs=len(group),
                    gpu_hours=sum(r.metrics.total_s for r in group) / 3600.0,
                    confirmed_wins=len(found),
                    merged_wins=len(found),
                    failure_rate=_failure_rate(group),
                    display_name=names.get(key, ""),
                )
            )
        rows.sort(key=lambda row: (-row.confirmed_wins, -row.runs, row.key))
    return pb.GetLeaderboardResponse(rows=rows, merges=[convert.merge_to_pb(m) for m in merges])


def _failure_rate(results: list[Any]) -> float:
    if not results:
        return 0.0
    return sum(1 for r in results if r.metrics.status != RunStatus.OK) / len(results)


def swarm_status(core: CoordinatorCore) -> pb.GetSwarmStatusResponse:
    head = core.branch.head()
    now = core.store.now()
    volunteers = [p for p in core.store.list_principals() if p.role.value == "volunteer" and not p.revoked]
    online = [p for p in volunteers if now - p.last_seen_s <= ONLINE_WINDOW_S]
    leases = core.store.list_leases(active_only=True)
    units = {lease.unit_id: core.store.get_unit(lease.unit_id) for lease in leases}
    queued = core.store.list_units(state=UnitState.QUEUED)
    classes = sorted({p.hardware_class for p in online} | {s.hardware_class for s in core.store.list_class_stats(head)})
    class_rows = []
    for hardware_class in classes:
        stats = core.store.get_class_stats(hardware_class, head)
        class_rows.append(
            pb.ClassStatus(
                hardware_class=hardware_class,
                volunteers_online=sum(1 for p in online if p.hardware_class == hardware_class),
                units_in_flight=sum(1 for u in units.values() if u.hardware_class == hardware_class),
                baseline_val_bpb=stats.mean_val_bpb if stats else 0.0,
                class_sigma=stats.sigma if stats else 0.0,
                baseline_samples=stats.samples if stats else 0,
            )
        )
    from coordinator.service.metrics import METRICS

    METRICS.queue_depth.set(len(queued))
    METRICS.in_flight.set(len(leases))
    METRICS.volunteers_online.set(len(online))
    return pb.GetSwarmStatusResponse(
        head_commit=head,
        queue_depth=len(queued),
        units_in_flight=len(leases),
        volunteers_online=len(online),
        classes=class_rows,
        recent_merges=[convert.merge_to_pb(m) for m in core.store.list_merges(limit=10)],
        settings=core.settings_pb(),
        undecided_results=core.undecided_results(),
    )


def history(core: CoordinatorCore, limit: int) -> pb.GetHistoryResponse:
    return pb.GetHistoryResponse(merges=[convert.merge_to_pb(m) for m in core.store.list_merges(limit=limit)])
