"""The volunteer loop's calls (lease, heartbeat, report) on the serving event loop.

These are nearly all of a swarm's traffic: per volunteer a lease and a report every run and a
heartbeat a minute. They run as coroutines over a `HotStore` (natively async on Redis, worker
threads on SQLite), so on Redis a call is its round trips and a little Python, with no thread hop;
what they decide comes from the core (pins, scores, signing), which keeps the rules in one place.
Decisions on a result are not made here: the decider process (or, inline, the core on a worker
thread) judges it after the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from coordinator.service.batching import HeartbeatGroups
from coordinator.service.core import META_TOKENIZER_HASH, CoordinatorCore, LeaseGrant, ReportOutcome, new_id
from coordinator.store.aio import HotStore
from coordinator.store.errors import PermissionDeniedError
from coordinator.store.types import Lease, NormalizedScore, Principal, RunMetrics, RunStatus


class WorkLoop:
    def __init__(
        self,
        core: CoordinatorCore,
        hot: HotStore,
        run_blocking: Callable[..., Awaitable[Any]],
        decide_blocking: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.core = core
        self.hot = hot
        self.heartbeats = HeartbeatGroups(
            hot, lambda: core.config.lease_duration_s, core.config.heartbeat_rewrite_share
        )
        self._run = run_blocking  # the rare blocking reads (a repeated report's hypothesis state)
        self._decide = decide_blocking or run_blocking  # inline decisions: they take the core's lock

    async def tokenizer(self) -> str:
        """The pinned tokenizer hash ("" until pinned), read from the store only until then."""
        core = self.core
        if not core.pinned_tokenizer:
            core.pinned_tokenizer = (await self.hot.get_meta(META_TOKENIZER_HASH)) or core.config.tokenizer_hash
        return core.pinned_tokenizer

    async def lease(self, principal: Principal, hardware_class: str, slot: int) -> LeaseGrant | None:
        """The best unit for this volunteer, signed. On an empty queue an inline core tops the
        queue up and tries once more; with a decider the caller wakes it and asks again."""
        core = self.core
        if hardware_class and hardware_class != principal.hardware_class:
            raise PermissionDeniedError(
                f"volunteer registered as {principal.hardware_class!r} cannot lease for {hardware_class!r}"
            )
        lease_args = (
            principal.principal_id, principal.owner, principal.hardware_class, core.config.lease_duration_s, slot
        )
        granted = await self.hot.lease_unit(*lease_args)  # also marks the volunteer seen, the hypothesis leased
        if granted is None and core.delegate is None:
            core.view.invalidate()  # a volunteer may have just come online: plan for it
            await self._decide(core.plan)
            granted = await self.hot.lease_unit(*lease_args)
        if granted is None:
            return None
        unit, lease = granted
        self.heartbeats.remember(lease)  # its deadline was just written: the next heartbeats need no write
        payload = core.work_unit_bytes(unit, lease, await self.tokenizer())
        return LeaseGrant(unit, lease, payload, core.signer.sign(payload), core.signer.key_id)

    async def heartbeat(self, principal: Principal, lease_id: str, step: int, fraction: float, loss: float) -> Lease:
        return await self.heartbeats.extend(principal, lease_id, step, fraction, loss)

    async def report(self, principal: Principal, lease_id: str, metrics: RunMetrics) -> ReportOutcome:
        core = self.core
        ok = metrics.status == RunStatus.OK
        # One trip: the lease, its unit and the class statistics the run is scored against (the
        # serving process reads no results; whoever judges publishes the statistics).
        context = await self.hot.report_context(lease_id)
        if context.lease.volunteer_id != principal.principal_id:
            raise PermissionDeniedError("that lease belongs to another volunteer")
        if context.existing is not None:  # a repeated report: the first answer again, nothing re-checked
            return await self._repeated(context.existing)
        pinned = await self.tokenizer()
        core.check_pins(metrics, pinned)
        score = NormalizedScore()
        if ok:
            score = core.score(metrics.val_bpb, context.class_stats)
        record, duplicate = await self.hot.record_result(
            lease_id, principal.principal_id, metrics, score, new_id("res")
        )
        self.heartbeats.forget(lease_id)  # the lease has ended: a late heartbeat is refused by the store
        if duplicate:
            return await self._repeated(record)
        if ok and not pinned and metrics.tokenizer_hash:
            await self.hot.compare_and_set_meta(META_TOKENIZER_HASH, None, metrics.tokenizer_hash)
            core.pinned_tokenizer = ""  # read the winner of the race next time
        if core.delegate is not None:
            core.delegate.wake()  # judged by the decider, from the store, after this answer
            return ReportOutcome(record, False, None)  # its state is about to change: not sent
        await self._decide(core.after_result, record)
        return ReportOutcome(record, False, await self._run(core.state_of, record.hypothesis_id))

    async def _repeated(self, record: Any) -> ReportOutcome:
        return ReportOutcome(record, True, await self._run(self.core.state_of, record.hypothesis_id))
