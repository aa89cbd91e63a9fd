"""Every Redis key the store uses, named in this one module.

A key is `{PREFIX}:` followed by one of the templates below, `{}` standing for an id. The braces
around the prefix are a Redis Cluster hash tag: every key of one store lives in one slot, so the
Lua scripts (which touch keys they compute) stay valid on a cluster too. The scripts build the
same names from `lua_key_builders()`, generated from these templates, so a name is never spelled
twice.

Records are hashes whose fields are the dataclass fields (numbers as text, nested values as
JSON), plus `seq`: a store-wide insertion counter that orders every index below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- counters and settings ------------------------------------------------------------------------
SEQUENCE = "seq"  # string: INCR counter; every record's `seq` (insertion order)
META = "meta"  # hash: meta key -> value

# -- principals and invites -----------------------------------------------------------------------
PRINCIPAL = "principal:{}"  # hash: one principal
PRINCIPALS = "principals"  # zset: principal id, score seq
PRINCIPALS_BY_OWNER = "principals-by-owner:{}"  # zset: principal id of one owner, score seq
PRINCIPAL_BY_TOKEN = "principal-by-token"  # hash: token hash -> principal id
INVITE = "invite:{}"  # hash: one invite, keyed by its token hash

# -- hypotheses -----------------------------------------------------------------------------------
HYPOTHESIS = "hypothesis:{}"  # hash: one hypothesis
HYPOTHESES = "hypotheses"  # zset: hypothesis id, score seq
HYPOTHESES_BY_STATE = "hypotheses-by-state:{}"  # zset: hypothesis id in one state, score seq
HYPOTHESIS_BY_FINGERPRINT = "hypothesis-by-fingerprint"  # hash: fingerprint -> hypothesis id

# -- work units and the queues ----------------------------------------------------------------------
UNIT = "unit:{}"  # hash: one work unit (plus kind_rank); code as train_py_sha256 / profiles_json_sha256
UNITS = "units"  # zset: unit id, score seq
UNITS_BY_HYPOTHESIS = "units-by-hypothesis:{}"  # zset: unit id of one hypothesis, score seq
UNITS_BY_STATE = "units-by-state:{}"  # zset: unit id in one state, score seq
# zset per (kind, class, base commit) of the units queued or leased, score seq: a count of the
# baseline runs still coming for a head without reading every pending unit. Built from
# units-by-state by the first count after an upgrade (meta PENDING_INDEX_FLAG), kept by every
# state change after that.
UNITS_PENDING = "units-pending:{}:{}:{}"
# string: one code text (train.py or profiles.json), keyed by its sha256 hex; written once (SET NX)
# by the script that enqueues the first unit naming it, shared by every such unit, never changed.
BLOB = "blob:{}"
# zset per (kind rank, class) of queued units: score -priority, member "<seq, 16 digits>:<unit id>",
# so ZRANGE gives priority high to low, then oldest (equal scores sort by member).
QUEUE = "queue:{}:{}"

# -- leases ---------------------------------------------------------------------------------------
LEASE = "lease:{}"  # hash: one lease
LEASES = "leases"  # zset: lease id, score seq
LEASES_ACTIVE = "leases-active"  # zset: active lease id, score deadline_s (the expiry sweep)

# -- results --------------------------------------------------------------------------------------
RESULT = "result:{}"  # hash: one result (metrics and score as JSON fields)
RESULTS = "results"  # zset: result id, score seq (report order)
RESULTS_BY_HYPOTHESIS = "results-by-hypothesis:{}"  # zset, score seq
RESULTS_BY_CLASS = "results-by-class:{}"  # zset, score seq
RESULTS_BY_VOLUNTEER = "results-by-volunteer:{}"  # zset, score seq (revocation walks it)
RESULT_BY_LEASE = "result-by-lease"  # hash: lease id -> result id (idempotent reports)

# -- statistics and merges ------------------------------------------------------------------------
CLASS_STATS = "class-stats"  # hash: JSON [class, commit] -> JSON ClassStats
MERGE = "merge:{}"  # hash: one merge record, keyed by commit
MERGES = "merges"  # zset: commit, score seq

TEMPLATES: dict[str, str] = {
    name: value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, str)
}

_SAFE_TEMPLATE = re.compile(r"^[a-z0-9:{}-]+$")
_SAFE_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass(frozen=True)
class KeySpace:
    """The keys of one store: `KeySpace("autoswarm").key(UNIT, unit_id)`."""

    prefix: str

    def __post_init__(self) -> None:
        if not _SAFE_PREFIX.match(self.prefix):
            raise ValueError(f"key prefix must match {_SAFE_PREFIX.pattern}, got {self.prefix!r}")

    @property
    def root(self) -> str:
        """What every key of this store starts with (the scripts' `P`)."""
        return "{" + self.prefix + "}:"

    def key(self, template: str, *parts: str) -> str:
        if template.count("{}") != len(parts):
            raise ValueError(f"{template!r} takes {template.count('{}')} parts, got {len(parts)}")
        return self.root + template.format(*parts)

    def record_root(self, template: str) -> str:
        """The part of a one-id template's key before the id (for scripts that page records)."""
        if not template.endswith("{}") or template.count("{}") != 1:
            raise ValueError(f"{template!r} is not a one-id record template")
        return self.root + template[:-2]

    def pattern(self) -> str:
        """SCAN pattern matching every key of this store (for tests and operators)."""
        return self.root.replace("{", "\\{").replace("}", "\\}") + "*"


def lua_key_builders() -> str:
    """Lua definitions of every key, relative to `P` (the store's root, passed as ARGV[1]):
    `KEY_META` for fixed keys and `key_unit(id)` style functions for templates with ids."""
    lines = ["local P = ARGV[1]"]
    for name, template in TEMPLATES.items():
        if not _SAFE_TEMPLATE.match(template):
            raise ValueError(f"template {name} = {template!r} has characters unsafe in Lua source")
        pieces = template.split("{}")
        if len(pieces) == 1:
            lines.append(f"local KEY_{name} = P .. '{template}'")
            continue
        params = [f"a{i}" for i in range(len(pieces) - 1)]
        body = " .. ".join(
            part
            for i, piece in enumerate(pieces)
            for part in ([f"'{piece}'"] if piece else []) + ([params[i]] if i < len(params) else [])
        )
        lines.append(f"local function key_{name.lower()}({', '.join(params)}) return P .. {body} end")
    return "\n".join(lines) + "\n"
