"""Policy: what to run next and what counts as a win. Pure decisions over a narrow read-only view.

The service reads nothing here but the returned decisions; see coordinator/policy/README.md for
the thresholds, their false-positive reasoning and the simulator's figures.
"""

from coordinator.policy.decisions import (
    ClassShift,
    CrashDecision,
    Judgement,
    Plan,
    RevertDecision,
    UnitRequest,
    after_crash,
    after_merge,
    allowed_classes,
    baseline_values,
    candidate_request,
    class_sigma,
    class_stats,
    hypothesis_evidence,
    judge,
    plan,
    plan_baselines,
    plan_candidates,
    stale_units,
    sweep,
    to_rejudge,
)
from coordinator.policy.literals import change_key, move_key, parse_literal, render_literal
from coordinator.policy.proposer import (
    MeasuredChange,
    Proposal,
    Proposer,
    ProposerSettings,
    history_from_view,
    proposals_for,
)
from coordinator.policy.settings import AcceptanceSettings, SettingsError
from coordinator.policy.statistics import Evidence, SigmaEstimate, normalize, pooled_evidence
from coordinator.policy.view import InMemoryView, PolicyView, VolunteerInfo

__all__ = [
    "AcceptanceSettings",
    "ClassShift",
    "CrashDecision",
    "Evidence",
    "InMemoryView",
    "Judgement",
    "MeasuredChange",
    "Plan",
    "PolicyView",
    "Proposal",
    "Proposer",
    "ProposerSettings",
    "RevertDecision",
    "SettingsError",
    "SigmaEstimate",
    "UnitRequest",
    "VolunteerInfo",
    "after_crash",
    "after_merge",
    "allowed_classes",
    "baseline_values",
    "candidate_request",
    "change_key",
    "class_sigma",
    "class_stats",
    "history_from_view",
    "hypothesis_evidence",
    "judge",
    "move_key",
    "normalize",
    "parse_literal",
    "plan",
    "plan_baselines",
    "plan_candidates",
    "pooled_evidence",
    "proposals_for",
    "render_literal",
    "stale_units",
    "sweep",
    "to_rejudge",
]
