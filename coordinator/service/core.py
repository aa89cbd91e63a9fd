"""The coordinator's core: applies requests and policy decisions to the store and the global branch.

The gRPC layer (servicer.py) only translates messages; the policy (coordinator/policy) only decides.
Everything here is synchronous and safe to call from worker threads: the store is the source of
truth for state, the branch for code, and `reconcile()` makes them agree after a crash.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from coordinator import branch as branch_mod
from coordinator.policy import decisions, statistics
from coordinator.policy.decisions import Judgement, UnitRequest
from coordinator.policy.proposer import Proposer, ProposerSettings, proposals_for
from coordinator.policy.settings import AcceptanceSettings
from coordinator.service.batching import REWRITE_AFTER_SHARE
from coordinator.service.errors import PreconditionError
from coordinator.service.policy_adapter import StoreView
from coordinator.service.signing import SigningKeys
from coordinator.store.base import Store, validate_texts
from coordinator.store.errors import (
    InvalidValueError,
    NotFoundError,
    PermissionDeniedError,
)
from coordinator.store.types import (
    MAX_PATCH_BYTES,
    MAX_RATIONALE_BYTES,
    MAX_SHORT_TEXT_BYTES,
    MAX_TITLE_BYTES,
    TERMINAL_HYPOTHESIS_STATES,
    ClassStats,
    Hypothesis,
    HypothesisSource,
    HypothesisState,
    Lease,
    MergeRecord,
    NormalizedScore,
    Principal,
    ResultRecord,
    Role,
    RunMetrics,
    RunStatus,
    UnitKind,
    WorkUnit,
)

log = logging.getLogger("autoswarm.coordinator")

META_HEAD = "head_commit"
META_TOKENIZER_HASH = "tokenizer_hash"  # pinned by the operator, or by the first ok result
META_REVOCATION_EPOCH = "revocation_epoch"  # changes whenever results stop counting


@dataclass(frozen=True)
class SwarmConfig:
    """Settings every work unit carries; identical for every volunteer of the swarm."""

    budget_s: float = 300.0
    dataset: str = "climbmix"
    data_manifest_id: str = ""
    tokenizer_hash: str = ""  # empty: pinned by the first ok result
    lease_factor: float = 3.0  # lease length = factor x budget + start-up allowance
    startup_allowance_s: float = 120.0
    heartbeat_interval_s: float = 60.0
    heartbeat_rewrite_share: float = REWRITE_AFTER_SHARE  # of the lease since its last write
    invite_only: bool = False
    auto_revert: bool = True
    proposer_enabled: bool = True
    policy_overrides: Mapping[str, object] = field(default_factory=dict)  # AcceptanceSettings fields
    proposer_overrides: Mapping[str, object] = field(default_factory=dict)  # ProposerSettings fields

    @property
    def lease_duration_s(self) -> float:
        return self.lease_factor * self.budget_s + self.startup_allowance_s


@dataclass(frozen=True)
class LeaseGrant:
    unit: WorkUnit
    lease: Lease
    payload: bytes  # serialized autoswarm.v1.WorkUnit
    signature: bytes
    key_id: str


@dataclass(frozen=True)
class ReportOutcome:
    record: ResultRecord
    duplicate: bool
    hypothesis_state: HypothesisState | None


class DecisionDelegate(Protocol):
    """Where decisions go when they are not made inline (coordinator.service.decider.DeciderLink)."""

    def wake(self, command: str = "wake") -> float: ...


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class CoordinatorCore:
    def __init__(
        self,
        store: Store,
        branch: branch_mod.GlobalBranch,
        signer: SigningKeys,
        config: SwarmConfig,
        profiles_loader: object | None = None,
    ) -> None:
        self.store = store
        self.branch = branch
        self.signer = signer
        self.config = config
        self._lock = threading.RLock()  # serializes decisions (judging, merging); leases stay parallel
        self.settings = AcceptanceSettings.from_dict(
            {"lease_factor": config.lease_factor, **dict(config.policy_overrides)}
        )
        self.view = StoreView(store, branch, self.settings.online_window_s)
        self.proposer = Proposer(ProposerSettings.from_dict(dict(config.proposer_overrides)), seed=0)
        self._last_sweep_key: object = None  # what every open judgement depends on, at the last sweep
        self._plan_lock = threading.Lock()  # one policy pass at a time
        # Called with the new head after every merge or revert (the server's branch mirror).
        self.on_branch_moved: Callable[[str], None] | None = None
        # Set in the serving process when decisions run in the decider process (decider.py):
        # reports, submissions and revocations then wake it instead of deciding inline.
        self.delegate: DecisionDelegate | None = None
        self.merges_done = 0
        self.reverts_done = 0
        self.pinned_tokenizer = ""  # empty: not pinned when last read

    # -- start-up --------------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Make store and branch agree after a restart; returns what was fixed (for the log)."""
        fixed: list[str] = []
        with self._lock:
            head = self.branch.head()
            merged_in_store = {m.commit for m in self.store.list_merges(limit=10_000)}
            for commit in reversed(self.branch.log(limit=10_000)):
                hypothesis_id = _trailer(commit.trailers, "Hypothesis-Id")
                reverts = _trailer(commit.trailers, "Reverts")
                if hypothesis_id and not reverts and commit.sha not in merged_in_store:
                    self.store.add_merge(
                        MergeRecord(
                            commit=commit.sha,
                            parent_commit=commit.parents[0] if commit.parents else "",
                            hypothesis_id=hypothesis_id,
                            title=commit.title,
                            delta_bpb_by_class=_deltas_from_trailers(commit.trailers),
                        )
                    )
                    fixed.append(f"merge record for {commit.sha[:10]}")
                if hypothesis_id and not reverts:
                    try:
                        hypothesis = self.store.get_hypothesis(hypothesis_id)
                    except NotFoundError:
                        continue
                    if hypothesis.state != HypothesisState.MERGED and hypothesis.merged_commit != commit.sha:
                        self.store.update_hypothesis(
                            hypothesis_id, state=HypothesisState.MERGED, merged_commit=commit.sha,
                            state_reason="merged (reconciled from the branch)",
                        )
                        fixed.append(f"hypothesis {hypothesis_id} marked merged")
                if reverts:
                    try:
                        merge = next(m for m in self.store.list_merges(limit=10_000) if m.commit == reverts)
                    except StopIteration:
                        continue
                    if not merge.reverted_by:
                        self.store.mark_reverted(reverts, commit.sha, commit.title)
                        fixed.append(f"merge {reverts[:10]} marked reverted")
            self.view.forget_merges()
            if self.store.get_meta(META_HEAD) != head:
                self.store.set_meta(META_HEAD, head)
                fixed.append(f"head set to {head[:10]}")
            if self.config.tokenizer_hash and not self.store.get_meta(META_TOKENIZER_HASH):
                self.store.set_meta(META_TOKENIZER_HASH, self.config.tokenizer_hash)
        for line in fixed:
            log.info("reconciled: %s", line)
        return fixed

    # -- identity -------------------------------------------------------------------------------

    def register_volunteer(
        self,
        hardware_json: str,
        hardware_class: str,
        owner: str,
        display_name: str,
        token_hash: str,
        invite_token_hash: str | None,
    ) -> Principal:
        validate_texts(
            {
                "owner": (owner, MAX_SHORT_TEXT_BYTES),
                "display_name": (display_name, MAX_SHORT_TEXT_BYTES),
                "hardware_class": (hardware_class, MAX_SHORT_TEXT_BYTES),
            }
        )
        if self.config.invite_only and not invite_token_hash:
            raise PermissionDeniedError("this swarm is invite-only: pass --invite TOKEN")
        if not hardware_class:
            raise InvalidValueError("hardware class could not be determined")
        return self.store.create_principal(
            Role.VOLUNTEER,
            owner=owner,
            display_name=display_name,
            token_hash=token_hash,
            hardware_class=hardware_class,
            hardware_json=hardware_json,
            invite_token_hash=invite_token_hash,
        )

    # -- what the work loop (work_loop.py) needs from the core -------------------------------------

    def work_unit_bytes(self, unit: WorkUnit, lease: Lease, tokenizer_hash: str) -> bytes:
        """The serialized autoswarm.v1.WorkUnit a lease hands out (what the coordinator signs)."""
        from autoswarm.v1 import swarm_pb2 as pb
        from coordinator.service.convert import UNIT_KIND_TO_PB

        message = pb.WorkUnit(
            lease_id=lease.lease_id,
            unit_id=unit.unit_id,
            kind=UNIT_KIND_TO_PB[unit.kind],
            hypothesis_id=unit.hypothesis_id,
            hardware_class=unit.hardware_class,
            base_commit=unit.base_commit,
            train_py=unit.train_py,
            profiles_json=unit.profiles_json,
            settings=self.settings_pb(tokenizer_hash),
            lease_deadline_unix_s=lease.deadline_s,
            issued_unix_s=lease.issued_s,
            volunteer_id=lease.volunteer_id,
        )
        return message.SerializeToString(deterministic=True)

    def settings_pb(self, tokenizer_hash: str | None = None) -> object:
        from autoswarm.v1 import swarm_pb2 as pb

        return pb.SwarmSettings(
            budget_s=self.config.budget_s,
            data_manifest_id=self.config.data_manifest_id,
            dataset_name=self.config.dataset,
            tokenizer_hash=self.pinned_tokenizer_hash() if tokenizer_hash is None else tokenizer_hash,
            lease_duration_s=self.config.lease_duration_s,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
        )

    def pinned_tokenizer_hash(self) -> str:
        """The swarm's tokenizer: the operator's, or the first ok result's (pinned by whichever
        serving process takes that report). Once pinned it never changes, so it is read from the
        store only until then (the work loop reads it the same way, asynchronously)."""
        if not self.pinned_tokenizer:
            self.pinned_tokenizer = self.store.get_meta(META_TOKENIZER_HASH) or self.config.tokenizer_hash
        return self.pinned_tokenizer

    def release(self, principal: Principal, lease_id: str, reason: str) -> None:
        self.store.release_lease(lease_id, principal.principal_id, reason)

    def check_pins(self, metrics: RunMetrics, pinned_tokenizer: str) -> None:
        """An ok result must have been measured on the swarm's data and tokenizer."""
        if metrics.status != RunStatus.OK:
            return
        if self.config.data_manifest_id and metrics.data_manifest_id != self.config.data_manifest_id:
            raise PreconditionError(
                f"result was measured on data manifest {metrics.data_manifest_id!r}; "
                f"this swarm pins {self.config.data_manifest_id!r}"
            )
        if pinned_tokenizer and metrics.tokenizer_hash != pinned_tokenizer:
            raise PreconditionError(
                f"result was measured with tokenizer {metrics.tokenizer_hash!r}; this swarm pins {pinned_tokenizer!r}"
            )

    def score(self, val_bpb: float, stats: ClassStats | None) -> NormalizedScore:
        """A run's normalized score against the statistics last published for its (class, base
        commit): whoever judges puts them after every baseline run and merge, so scoring reads
        one stored record instead of every result."""
        return statistics.normalize(val_bpb, stats, self.settings.min_baseline_samples)

    def state_of(self, hypothesis_id: str) -> HypothesisState | None:
        if not hypothesis_id:
            return None
        return self.store.get_hypothesis(hypothesis_id).state

    def _advance_state(self, hypothesis_id: str, expected: HypothesisState, new: HypothesisState) -> None:
        from coordinator.store.errors import ConflictError

        try:
            self.store.update_hypothesis(hypothesis_id, state=new, expected_state=expected)
        except ConflictError:
            pass  # someone else moved it on; the later state wins

    # -- decisions ------------------------------------------------------------------------------

    def after_result(self, record: ResultRecord) -> None:
        """Apply what the policy decides after a new result (idempotent: safe to re-run). New
        results are read once for the whole decision, not once per policy read."""
        with self._lock, self.view.one_read_of_results():
            if record.metrics.status != RunStatus.OK:
                decision = decisions.after_crash(self.view, record, self.settings)
                if decision.request is not None and decision.retry:
                    self._enqueue(decision.request)
                if decision.state is not None and record.hypothesis_id:
                    self._set_state(record.hypothesis_id, decision.state, decision.reason)
            if record.kind == UnitKind.BASELINE:
                stats = decisions.class_stats(
                    self.view, record.hardware_class, record.base_commit, self.settings, self.store.now()
                )
                self.store.put_class_stats(stats)
                self._check_head_merge()
            if record.kind != UnitKind.BASELINE:
                if record.hypothesis_id:
                    self.judge(record.hypothesis_id)
                return
            # After a baseline, every open hypothesis measured on that class (its baseline moved).
            for hypothesis in decisions.to_rejudge(self.view, record, self.settings):
                self.judge(hypothesis.hypothesis_id)

    def _set_state(
        self, hypothesis_id: str, state: HypothesisState, reason: str, read: Hypothesis | None = None
    ) -> Hypothesis:
        """`read`: the hypothesis as the caller just read it (one store trip fewer per judgement)."""
        hypothesis = read
        if hypothesis is None or hypothesis.hypothesis_id != hypothesis_id:
            hypothesis = self.store.get_hypothesis(hypothesis_id)
        if hypothesis.state == state or hypothesis.state in TERMINAL_HYPOTHESIS_STATES:
            return hypothesis
        hypothesis = self.store.update_hypothesis(hypothesis_id, state=state, state_reason=reason[:200])
        if state in TERMINAL_HYPOTHESIS_STATES:
            self.store.cancel_units(hypothesis_id)
        return hypothesis

    def judge(self, hypothesis_id: str) -> None:
        hypothesis = self.store.get_hypothesis(hypothesis_id)
        if hypothesis.state in TERMINAL_HYPOTHESIS_STATES:
            return
        self._apply(decisions.judge(self.view, hypothesis, self.settings), hypothesis)

    def _apply(self, judgement: Judgement, read: Hypothesis | None = None) -> None:
        for unit_id in judgement.cancel_unit_ids:
            self._cancel_unit(unit_id)
        hypothesis = self._set_state(judgement.hypothesis_id, judgement.state, judgement.reason, read)
        if hypothesis.state in TERMINAL_HYPOTHESIS_STATES:
            return
        if judgement.confirmed:
            self.merge(hypothesis, judgement)
            return
        for request in judgement.requests:
            self._enqueue_for(hypothesis, request)

    def _cancel_unit(self, unit_id: str) -> None:
        try:
            self.store.cancel_unit(unit_id)  # a unit leased meanwhile finishes and is judged then
        except NotFoundError:
            log.debug("unit %s to cancel is unknown", unit_id)

    def _enqueue_for(self, hypothesis: Hypothesis, request: UnitRequest) -> None:
        if request.base_commit not in (hypothesis.base_commit, self.branch.head()):
            # The head moved since the policy looked; the next pass asks again on the new head.
            log.debug("skipping a unit of %s on the old head %s", hypothesis.hypothesis_id, request.base_commit[:10])
            return
        try:
            self._enqueue(request, hypothesis)
        except branch_mod.MergeConflictError as exc:
            self._set_state(
                hypothesis.hypothesis_id, HypothesisState.CONFLICTED,
                f"does not merge onto {request.base_commit[:10]}: {exc.reason}",
            )
        except branch_mod.AlreadyAppliedError as exc:
            self._set_state(hypothesis.hypothesis_id, HypothesisState.SUPERSEDED, f"already on the head: {exc}")

    def merge(self, hypothesis: Hypothesis, judgement: Judgement) -> None:
        """A confirmed win lands on the head as one commit carrying its evidence."""
        head = self.branch.head()
        evidence = judgement.evidence
        deltas = evidence.delta_bpb_by_class()
        results = self.view.counting_results(hypothesis_id=hypothesis.hypothesis_id)
        body_lines = [hypothesis.rationale.strip(), "", "Evidence:"]
        body_lines += [f"  {line}" for line in evidence.lines()] or ["  (see trailers)"]
        trailers: dict[str, str | list[str]] = {
            "Hypothesis-Id": hypothesis.hypothesis_id,
            "Proposer": hypothesis.proposer_id,
            "Result-Id": [r.result_id for r in results if r.metrics.status == RunStatus.OK],
        }
        for hardware_class, delta in sorted(deltas.items()):
            trailers["Delta-Bpb-" + branch_mod.trailer_token(hardware_class)] = f"{delta:.6f}"
        author = self._author_of(hypothesis)
        try:
            commit = self.branch.commit_win(
                hypothesis.base_commit,
                hypothesis.patch,
                title=hypothesis.title,
                body="\n".join(body_lines),
                author_name=author,
                author_email=f"{branch_mod.trailer_token(author) or 'unknown'}@autoswarm.invalid",
                trailers=trailers,
                expected_head=judgement.merge_onto or head,
            )
        except branch_mod.MergeConflictError as exc:
            self._set_state(hypothesis.hypothesis_id, HypothesisState.CONFLICTED, f"does not merge: {exc.reason}")
            return
        except branch_mod.AlreadyAppliedError as exc:
            self._set_state(hypothesis.hypothesis_id, HypothesisState.SUPERSEDED, f"already on the head: {exc}")
            return
        except branch_mod.RefMovedError:
            log.info("head moved while merging %s; it is re-verified on the new head", hypothesis.hypothesis_id)
            return
        self.store.add_merge(
            MergeRecord(
                commit=commit,
                parent_commit=head,
                hypothesis_id=hypothesis.hypothesis_id,
                title=hypothesis.title,
                delta_bpb_by_class=deltas,
            )
        )
        self.view.forget_merges()
        self.store.update_hypothesis(
            hypothesis.hypothesis_id, state=HypothesisState.MERGED, merged_commit=commit,
            state_reason=f"merged as {commit[:10]}",
        )
        self.store.set_meta(META_HEAD, commit)
        # The win's runs on the parent count as the new head's baseline (reuse_merged_samples):
        # published now, runs on the new head are scored before its first baseline run reports.
        for hardware_class in sorted(deltas):
            self.store.put_class_stats(
                decisions.class_stats(self.view, hardware_class, commit, self.settings, self.store.now())
            )
        self._branch_moved(commit)
        from coordinator.service.metrics import METRICS

        METRICS.merges.inc()
        self.merges_done += 1
        log.info("merged %s as %s", hypothesis.hypothesis_id, commit[:10])
        self.plan()

    def _check_head_merge(self) -> None:
        """After a merge, a class whose new baseline is significantly worse gets the merge reverted."""
        head = self.branch.head()
        merge = self.view.merge_for(head)
        if merge is None or merge.reverted_by:
            return
        verdict = decisions.after_merge(self.view, merge, self.settings)
        if not verdict.flagged:
            return
        reason = verdict.reason
        log.warning("merge %s made %s worse: %s", merge.commit[:10], ", ".join(verdict.flagged), reason)
        if not (verdict.revert and self.config.auto_revert):
            self.store.set_meta(f"flag:{merge.commit}", reason)
            return
        revert_commit = self.branch.revert(
            merge.commit, reason, trailers={"Reverts": merge.commit, "Hypothesis-Id": merge.hypothesis_id}
        )
        self.store.mark_reverted(merge.commit, revert_commit, reason)
        self.view.forget_merges()
        try:
            self.store.update_hypothesis(merge.hypothesis_id, state=HypothesisState.REVERTED, state_reason=reason[:200])
        except NotFoundError:
            pass
        self.store.set_meta(META_HEAD, revert_commit)
        self._branch_moved(revert_commit)
        from coordinator.service.metrics import METRICS

        METRICS.reverts.inc()
        self.reverts_done += 1
        self.plan()

    def _branch_moved(self, head: str) -> None:
        if self.on_branch_moved is not None:
            self.on_branch_moved(head)

    def plan(self) -> int:
        """One policy pass: cancel stale units, judge open hypotheses, top up baselines and
        candidates, and let the built-in proposer keep the queue about as deep as the volunteers.

        Judging every open hypothesis is needed only when something they all depend on moved: the
        head. (A class's new baseline or noise changes only the judgements of hypotheses with runs
        on that class, and after_result re-judges exactly those; revocations call rejudge_open.)
        That sweep holds the decision lock. The common light pass (top-ups) is computed without it,
        so reports keep flowing, and applied under it after re-checking that each request is still
        wanted."""
        with self._plan_lock:
            sweep_key = self.branch.head()
            if sweep_key != self._last_sweep_key:
                with self._lock:
                    with self.view.pass_snapshot():
                        plan = decisions.plan(self.view, self.settings)
                    applied = self._apply_plan(plan, recheck=False)
                    self._last_sweep_key = sweep_key
            else:
                with self.view.pass_snapshot():
                    plan = decisions.Plan(
                        (), (), tuple(decisions.plan_baselines(self.view, self.settings)),
                        tuple(decisions.plan_candidates(self.view, self.settings)),
                    )
                with self._lock:
                    applied = self._apply_plan(plan, recheck=True) if self.branch.head() == sweep_key else 0
            if self.config.proposer_enabled:
                self._propose()
            return applied

    def _apply_plan(self, plan: decisions.Plan, recheck: bool) -> int:
        for unit_id in plan.cancel_unit_ids:
            self._cancel_unit(unit_id)
        for judgement in plan.judgements:
            self._apply(judgement)
        applied = 0
        for request in [*plan.baseline_requests, *plan.candidate_requests]:
            if not request.hypothesis_id:
                self._enqueue(request)
                applied += 1
                continue
            hypothesis = self.store.get_hypothesis(request.hypothesis_id)
            if recheck and (
                hypothesis.state != HypothesisState.QUEUED
                or self.view.pending_units(hypothesis_id=hypothesis.hypothesis_id)
            ):
                continue  # judged or scheduled meanwhile
            self._enqueue_for(hypothesis, request)
            applied += 1
        return applied

    def _propose(self) -> None:
        for proposal in proposals_for(self.view, self.proposer, self.settings):
            try:
                self.submit_hypothesis(
                    proposer_id="builtin",
                    title=proposal.title,
                    rationale=proposal.rationale,
                    patch="",
                    base_commit="",
                    constant_changes=proposal.literals,
                    source=HypothesisSource.BUILTIN,
                    priority=proposal.priority,
                )
            except Exception as exc:  # a bad proposal is skipped, never fatal
                log.info("built-in proposal %r skipped: %s", proposal.title, exc)

    def _enqueue(self, request: UnitRequest, hypothesis: Hypothesis | None = None) -> WorkUnit:
        files = self._files_for(request.base_commit, request.hypothesis_id, hypothesis)
        unit = WorkUnit(
            unit_id=new_id("unit"),
            kind=request.kind,
            hardware_class=request.hardware_class,
            base_commit=request.base_commit,
            train_py=files["train.py"],
            profiles_json=files.get("profiles.json", "{}"),
            hypothesis_id=request.hypothesis_id,
            priority=request.priority,
            excluded_volunteers=tuple(request.excluded_volunteers),
            excluded_owners=tuple(request.excluded_owners),
        )
        return self.store.enqueue_unit(unit)

    def _files_for(self, base_commit: str, hypothesis_id: str, hypothesis: Hypothesis | None = None) -> dict[str, str]:
        """The code a unit runs: the commit itself, or the hypothesis's change on that commit
        (`hypothesis` if the caller has it: its base and patch never change)."""
        if not hypothesis_id:
            return self.branch.files_at(base_commit)
        if hypothesis is None or hypothesis.hypothesis_id != hypothesis_id:
            hypothesis = self.store.get_hypothesis(hypothesis_id)
        for unit in self.store.list_units(hypothesis_id=hypothesis_id):
            if unit.base_commit == base_commit:  # the same change on the same commit: the same code
                return {"train.py": unit.train_py, "profiles.json": unit.profiles_json}
        if base_commit == hypothesis.base_commit:
            return dict(self.branch.check_patch(hypothesis.base_commit, hypothesis.patch).tree_files)
        if base_commit != self.branch.head():
            raise InvalidValueError(f"units run on the head or the hypothesis's base, not {base_commit[:10]}")
        return dict(self.branch.rebase_patch(hypothesis.base_commit, hypothesis.patch).tree_files)

    def _author_of(self, hypothesis: Hypothesis) -> str:
        if hypothesis.proposer_id == "builtin":
            return "autoswarm-proposer"
        try:
            principal = self.store.get_principal(hypothesis.proposer_id)
        except NotFoundError:
            return hypothesis.proposer_id or "unknown"
        return principal.display_name or principal.principal_id

    # -- hypotheses -----------------------------------------------------------------------------

    def submit_hypothesis(
        self,
        proposer_id: str,
        title: str,
        rationale: str,
        patch: str,
        base_commit: str,
        constant_changes: Mapping[str, str],
        source: HypothesisSource,
        priority: float = 0.0,
    ) -> Hypothesis:
        validate_texts(
            {
                "title": (title, MAX_TITLE_BYTES),
                "rationale": (rationale, MAX_RATIONALE_BYTES),
                "patch": (patch, MAX_PATCH_BYTES),
            }
        )
        if not title.strip():
            raise InvalidValueError("a hypothesis needs a title")
        if bool(patch.strip()) == bool(constant_changes):
            raise InvalidValueError("give exactly one of a patch or constant changes")
        base = self.branch.resolve(base_commit) if base_commit else self.branch.head()
        if constant_changes:
            patch = self._patch_for_constants(base, constant_changes)
        return self._add_hypothesis(
            title=title.strip(),
            rationale=rationale,
            patch=patch,
            base_commit=base,
            source=source,
            proposer_id=proposer_id,
            constant_changes=constant_changes,
            priority=priority,
        )

    def _patch_for_constants(self, base: str, constant_changes: Mapping[str, str]) -> str:
        import ast

        from trainer.constants import ConstantsError, rewrite_constants

        values: dict[str, object] = {}
        for name, literal in constant_changes.items():
            try:
                values[name] = ast.literal_eval(literal)
            except (ValueError, SyntaxError) as exc:
                raise InvalidValueError(f"{name}={literal!r} is not a Python literal") from exc
        source = self.branch.read_file(base, "train.py")
        try:
            new_source = rewrite_constants(source, values)
        except ConstantsError as exc:
            raise InvalidValueError(str(exc)) from exc
        if new_source == source:
            raise InvalidValueError("the constant changes do not change train.py")
        return self.branch.diff_files(base, {"train.py": new_source})

    def _add_hypothesis(
        self,
        *,
        title: str,
        rationale: str,
        patch: str,
        base_commit: str,
        source: HypothesisSource,
        proposer_id: str,
        constant_changes: Mapping[str, str],
        priority: float,
    ) -> Hypothesis:
        try:
            check = self.branch.check_patch(base_commit, patch)
        except branch_mod.UnknownCommitError as exc:
            raise NotFoundError(str(exc)) from exc
        except branch_mod.PatchError as exc:
            raise InvalidValueError(f"patch refused: {exc}") from exc
        fingerprint = check.fingerprint
        touched = self._touched_classes(base_commit, check.files)
        hypothesis = self.store.add_hypothesis(
            Hypothesis(
                hypothesis_id=new_id("hyp"),
                title=title,
                rationale=rationale,
                patch=patch,
                base_commit=base_commit,
                source=source,
                proposer_id=proposer_id,
                fingerprint=fingerprint,
                priority=priority,
                constant_changes=dict(constant_changes),
                touched_classes=touched,
            )
        )
        if self.delegate is not None:
            self.delegate.wake("plan")  # the decider schedules its first run
            return hypothesis
        with self._lock:
            request = decisions.candidate_request(self.view, hypothesis, self.settings)
            if request is not None:
                self._enqueue_for(hypothesis, request)
        return hypothesis

    def _touched_classes(self, base_commit: str, files: Mapping[str, str]) -> tuple[str, ...]:
        if "profiles.json" not in files:
            return ()
        before = json.loads(self.branch.read_file(base_commit, "profiles.json"))
        after = json.loads(files["profiles.json"])
        before_classes = before.get("classes", before)
        after_classes = after.get("classes", after)
        names = set(before_classes) | set(after_classes)
        return tuple(sorted(n for n in names if before_classes.get(n) != after_classes.get(n)))

    # -- admin ----------------------------------------------------------------------------------

    def revoke_owner(self, owner: str, reason: str) -> tuple[list[str], int]:
        revoked, discounted = self.store.revoke_owner(owner, reason)
        self.store.set_meta(META_REVOCATION_EPOCH, new_id("epoch"))  # other processes' caches are stale
        self.rejudge_open()
        return revoked, discounted

    def revoke_volunteer(self, volunteer_id: str, reason: str) -> int:
        discounted = self.store.revoke_principal(volunteer_id, reason)
        self.store.set_meta(META_REVOCATION_EPOCH, new_id("epoch"))  # other processes' caches are stale
        self.rejudge_open()
        return discounted

    def rejudge_open(self) -> None:
        """Judge every open hypothesis again (results stopped counting)."""
        self.view.forget_results()
        self._last_sweep_key = None
        if self.delegate is not None:
            self.delegate.wake("rejudge")
            return
        with self._lock:
            self._republish_head_stats()
            for judgement in decisions.sweep(self.view, self.settings):
                self._apply(judgement)

    def _republish_head_stats(self) -> None:
        """Results stopped counting: the statistics published for the head (what runs are scored
        against, and the leaderboard's baselines) are computed again without them."""
        head = self.branch.head()
        with self.view.one_read_of_results():
            for stats in self.store.list_class_stats(head):
                self.store.put_class_stats(
                    decisions.class_stats(self.view, stats.hardware_class, head, self.settings, self.store.now())
                )

    def undecided_results(self, limit: int = 10_000) -> int:
        """Results reported but not judged yet (always 0 when decisions run inline)."""
        if self.delegate is None:
            return 0
        from coordinator.service.decider import META_CURSOR
        from coordinator.store.types import ResultFilter

        cursor = self.store.get_meta(META_CURSOR) or ""
        return len(self.store.list_results(ResultFilter(), limit=limit, after=cursor))

    def expire(self) -> list[Lease]:
        return self.store.expire_leases()


def _trailer(trailers: Mapping[str, object], key: str) -> str:
    value = trailers.get(key)
    if isinstance(value, list | tuple):
        return str(value[0]) if value else ""
    return str(value or "")


def _deltas_from_trailers(trailers: Mapping[str, object]) -> dict[str, float]:
    deltas: dict[str, float] = {}
    for key in trailers:
        if key.startswith("Delta-Bpb-"):
            try:
                deltas[key.removeprefix("Delta-Bpb-")] = float(_trailer(trailers, key))
            except ValueError:
                continue
    return deltas
