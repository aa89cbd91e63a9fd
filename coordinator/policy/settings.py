"""Acceptance and scheduling thresholds. Defaults were chosen with `autoswarm simulate`; the
reasoning behind each (false-positive rates, run cost) is in coordinator/policy/README.md."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self, TypeVar


class SettingsError(ValueError):
    """A settings dict or JSON document names an unknown field or holds a bad value."""


_S = TypeVar("_S")


class SettingsFromJson:
    """from_dict / from_json for a settings dataclass: its defaults overridden by a dict or a
    JSON object; unknown names, wrong types and bad values raise SettingsError."""

    SETTINGS_NAME: ClassVar[str] = "settings"

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> Self:
        return build_settings(cls, values, cls.SETTINGS_NAME)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(overrides_from_json(text, f"{cls.SETTINGS_NAME} settings"))


@dataclass(frozen=True)
class AcceptanceSettings(SettingsFromJson):
    SETTINGS_NAME: ClassVar[str] = "acceptance"

    # -- baselines and class noise ---------------------------------------------------------------
    baseline_replicates: int = 3  # baseline runs each active class gets on each new head
    baseline_max: int = 12  # at most this many baseline runs per class and head
    baseline_on_demand: bool = True  # a hypothesis asks for a baseline run when that tightens its test more
    min_baseline_samples: int = 2  # below this a (class, commit) has no usable baseline
    reuse_merged_samples: bool = True  # a merged win's runs on its merge parent ran the new head's code
    prior_sigma: float = 0.01  # bpb; a class's noise until its own baselines give min_sigma_dof
    prior_sigma_by_class: Mapping[str, float] = field(default_factory=dict)
    min_sigma_dof: int = 6  # dof of a class's measured spread before decisions use it (they wait till then)
    # Each class's noise is raised (never lowered) towards the classes' pooled noise, weighted as
    # this many dof: a 6-dof estimate can come out at half the real noise, which doubles every z
    # on the class (policy README). 0: off.
    sigma_shrink_dof: float = 6.0
    sigma_floor: float = 1e-4  # bpb; identical numbers from deterministic runs must not make z infinite
    sigma_window_groups: int = 100  # newest commits whose baseline runs feed a class's sigma
    # -- one hypothesis ---------------------------------------------------------------------------
    discard_z: float = 0.0  # first run's z below this: rejected at once (early discard)
    promising_z: float = 1.5  # first run's z at least this: replicated; between the two: rejected as
    # "weakly better" (mostly noise; not worth replicating alone)
    confirm_z: float = 3.0  # one-sided z of the pooled evidence needed to confirm
    # Empirical-Bayes route to a confirmation below confirm_z: the distribution of true effects is
    # fitted to the swarm's own recent first runs, and a change confirms once the posterior
    # probability that it is not an improvement is at most fdr_alpha (0: off) and z >= fdr_min_z.
    fdr_alpha: float = 0.0
    fdr_min_z: float = 2.0
    fdr_window: int = 200  # newest first runs (one per hypothesis) that the fit uses
    fdr_min_observations: int = 50  # fewer first runs than this: only confirm_z confirms
    fdr_noise_factor: float = 1.0  # the fit takes first runs as this much noisier than they are:
    # runs on one head share its baseline error, so the runs spread more than independent ones
    # would; a wider assumed noise leaves a narrower, stricter effect distribution
    futility_z: float = (
        1.0  # from the second run on: pooled z projected to max_samples runs below this: rejected
    )
    verify_z: float = 0.0  # runs on the head (after the base moved) must not point the other way
    verify_max_lag: int = 2  # runs this many merges behind the head still count as on the head
    loo_min_z: float = 1.0  # evidence without any single owner must still reach this z
    clip_sigma: float = 4.0  # one run moves the evidence by at most this many sigmas
    min_volunteers: int = 2  # distinct volunteers behind a confirmation
    min_owners: int = 2  # distinct owners behind a confirmation
    max_samples: int = 6  # runs of one hypothesis (first run plus replicates) before giving up
    # A near miss at max_samples (pooled z from extend_z up to confirm_z) keeps replicating up to
    # extended_max_samples runs: a real step of about 2 sigma that ends at z = 2.3 to 3 is the one
    # most worth a few more runs. extend_z 0: off.
    extend_z: float = 2.3
    extended_max_samples: int = 10
    # The same change (the same constants from the same values to the same values) proposed again
    # on a later head: the runs of its earlier hypotheses join its evidence, so a real step of 1 to
    # 2 sigma, weakly better each time alone, adds up instead of being rejected afresh. Off by
    # default: finding the earlier hypotheses reads every hypothesis of the swarm per judgement,
    # which a swarm with thousands of them cannot afford on every report (policy README).
    pool_same_change: bool = False
    max_crash_retries: int = 2  # crashed/timed-out/OOM runs retried this often, then failed
    # -- after a merge ----------------------------------------------------------------------------
    revert_z: float = 3.0  # a class's new head baseline this many sigmas worse: revert the merge
    revert_min_samples: int = 2  # fresh baseline runs on the new head before judging a class
    revert_enabled: bool = True
    # -- the queue --------------------------------------------------------------------------------
    lease_factor: float = 3.0  # lease deadline = factor x budget (heartbeats extend it)
    queue_factor: float = 1.0  # queued units kept per online volunteer of a class
    online_window_s: float = 900.0  # a volunteer seen this recently counts as online

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SettingsError("; ".join(problems))

    def prior_sigma_for(self, hardware_class: str) -> float:
        return float(self.prior_sigma_by_class.get(hardware_class, self.prior_sigma))

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["prior_sigma_by_class"] = dict(self.prior_sigma_by_class)
        return out

    def replace(self, **changes: object) -> AcceptanceSettings:
        return self.from_dict({**self.to_dict(), **changes})


def overrides_from_json(text: str, what: str) -> dict[str, object]:
    """The JSON object in `text`, or SettingsError naming `what`."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise SettingsError(f"{what}: must be a JSON object")
    return values


def build_settings(cls: type[_S], values: Mapping[str, object], what: str) -> _S:
    """A settings dataclass with its defaults overridden by `values`, each converted to the type
    of its default; unknown names, wrong types and (in the class's checks) bad values raise."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"unknown {what} setting(s): {', '.join(unknown)}")
    defaults = cls()
    return cls(**{name: coerce_setting(name, value, getattr(defaults, name)) for name, value in values.items()})


def coerce_setting(name: str, value: object, default: object) -> object:
    """`value` as the type of the setting's default, or SettingsError."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise SettingsError(f"{name} must be an object of class -> number, got {value!r}")
        out: dict[str, float] = {}
        for key, item in value.items():
            if not isinstance(key, str) or isinstance(item, bool) or not isinstance(item, int | float):
                raise SettingsError(f"{name}[{key!r}] must be a number, got {item!r}")
            out[key] = float(item)
        return out
    return value


def _problems(s: AcceptanceSettings) -> list[str]:
    problems: list[str] = []
    positive = {
        "prior_sigma": s.prior_sigma,
        "sigma_floor": s.sigma_floor,
        "confirm_z": s.confirm_z,
        "lease_factor": s.lease_factor,
        "clip_sigma": s.clip_sigma,
        "fdr_noise_factor": s.fdr_noise_factor,
        "revert_z": s.revert_z,
        "online_window_s": s.online_window_s,
    }
    problems += [f"{k} must be > 0, got {v}" for k, v in positive.items() if not v > 0]
    at_least = {
        "baseline_replicates": (s.baseline_replicates, 1),
        "min_baseline_samples": (s.min_baseline_samples, 1),
        "baseline_max": (s.baseline_max, 1),
        "min_sigma_dof": (s.min_sigma_dof, 1),
        "sigma_window_groups": (s.sigma_window_groups, 1),
        "min_volunteers": (s.min_volunteers, 1),
        "min_owners": (s.min_owners, 1),
        "max_samples": (s.max_samples, 1),
        "extended_max_samples": (s.extended_max_samples, 0),
        "max_crash_retries": (s.max_crash_retries, 0),
        "verify_max_lag": (s.verify_max_lag, 0),
        "fdr_window": (s.fdr_window, 1),
        "fdr_min_observations": (s.fdr_min_observations, 1),
        "revert_min_samples": (s.revert_min_samples, 1),
        "sigma_shrink_dof": (s.sigma_shrink_dof, 0),
    }
    problems += [f"{k} must be >= {lo}, got {v}" for k, (v, lo) in at_least.items() if v < lo]
    if s.max_samples < max(s.min_volunteers, s.min_owners):
        problems.append("max_samples must allow min_volunteers and min_owners distinct runs")
    if s.min_baseline_samples > s.baseline_replicates:
        problems.append("min_baseline_samples cannot exceed baseline_replicates")
    if s.discard_z > s.promising_z:
        problems.append("discard_z cannot exceed promising_z")
    if not 0.0 <= s.fdr_alpha < 1.0:
        problems.append(f"fdr_alpha must be in [0, 1), got {s.fdr_alpha}")
    if s.queue_factor < 0:
        problems.append(f"queue_factor must be >= 0, got {s.queue_factor}")
    if s.extend_z < 0:
        problems.append(f"extend_z must be >= 0 (0: no near-miss extension), got {s.extend_z}")
    if not problems:
        # The strongest evidence a hypothesis can reach on a new swarm's first head: max_samples
        # runs, each clipped at clip_sigma, against baseline_max baseline runs, with the class
        # noise measured on min_sigma_dof dof. Below confirm_z nothing could ever be confirmed
        # there, so no head would ever follow to add dof: the swarm would stall.
        from coordinator.policy.statistics import t_to_z  # settings load before statistics

        strongest_t = s.clip_sigma / math.sqrt(1.0 / s.max_samples + 1.0 / s.baseline_max)
        strongest_z = t_to_z(strongest_t, s.min_sigma_dof)
        if strongest_z < s.confirm_z:
            problems.append(
                f"confirm_z {s.confirm_z} is out of reach: {s.max_samples} runs clipped at {s.clip_sigma} sigma "
                f"against {s.baseline_max} baseline runs, with the noise on {s.min_sigma_dof} dof, reach at most "
                f"z = {strongest_z:.2f} (raise min_sigma_dof, clip_sigma, max_samples or baseline_max)"
            )
    bad_priors = [k for k, v in s.prior_sigma_by_class.items() if not (isinstance(v, float | int) and v > 0)]
    if bad_priors:
        problems.append(f"prior_sigma_by_class must be > 0 for {', '.join(sorted(bad_priors))}")
    return problems
