"""The global branch: a real git repository whose one branch (`global`) holds the swarm's best
train.py and profiles.json, one commit per merged win or revert, so `git log global` tells the story.

Layout. The repository is *bare* and is driven with plumbing only (hash-object, read-tree into a
private temporary index, apply --cached, write-tree, merge-tree --write-tree, commit-tree,
update-ref with compare-and-swap). A bare repository has no working tree that a crash could leave
half-written or that two threads could fight over: every check and merge computes trees in
private temporary index files, and the only mutation is the atomic ref update. Operators read it
with ordinary git (`git --git-dir DATA/global.git log global`, or clone it).

Isolation. Git runs with GIT_CONFIG_NOSYSTEM=1 and GIT_CONFIG_GLOBAL=/dev/null, `--git-dir` always
given explicitly (never discovered from the current directory), inherited GIT_* location variables
dropped, identities passed through the environment: a CI box without a git identity works, and a
user's configuration (aliases, diff.noprefix, hooks paths, ...) cannot change what is produced.

Three-way merges use git's own merge machinery (ort, via `git merge-tree --write-tree`). Git 2.39
has no `--merge-base`, so a merge of trees (base, ours, theirs) is expressed with three synthetic
commits: a root commit holding the base tree and two children holding ours and theirs; their merge
base is then exactly the base. The synthetic commits are never referenced and are pruned by gc.

Threads. Mutations (commit_win, revert, bundle, push_mirror) hold an internal lock; reads and
patch checks use private temporary indexes and may run concurrently. One coordinator process owns
the repository; the compare-and-swap on the branch ref still catches anyone else moving it.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from coordinator.store.types import MAX_PATCH_BYTES, MAX_PROFILES_BYTES, MAX_TRAIN_PY_BYTES

__all__ = [
    "DEFAULT_ALLOWED_PATHS",
    "AlreadyAppliedError",
    "BranchError",
    "CommitInfo",
    "GlobalBranch",
    "MergeConflictError",
    "MessageError",
    "PatchCheck",
    "PatchError",
    "RebaseOutcome",
    "RefMovedError",
    "UnknownCommitError",
    "UnknownPathError",
    "format_message",
    "trailer_token",
]

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

DEFAULT_BRANCH = "global"  # the branch name when the coordinator is not told otherwise
DEFAULT_ALLOWED_PATHS = ("train.py", "profiles.json")  # what a hypothesis may change
SWARM_NAME = "autoswarm"  # author of the first commit and of reverts; committer of everything
SWARM_EMAIL = "autoswarm@localhost"
LOCAL_GIT_TIMEOUT_S = 60.0  # any local git command; they take milliseconds
PUSH_TIMEOUT_S = 120.0  # a mirror push over the network
DIFF_CONTEXT_LINES = 3  # context of every patch this module produces
# Synthetic merge-helper commits get a fixed date so identical merges reuse identical objects.
SYNTHETIC_DATE = "1000000000 +0000"
MAX_FILE_BYTES = {"train.py": MAX_TRAIN_PY_BYTES, "profiles.json": MAX_PROFILES_BYTES}
DEFAULT_MAX_FILE_BYTES = MAX_TRAIN_PY_BYTES  # any other allowed path

_ZERO_OID = "0" * 40
# Git recognizes a trailer only when its key is letters, digits and dashes.
_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_OID = re.compile(r"^[0-9a-f]{40}$")
# Location/identity variables of an enclosing git invocation (e.g. a hook) must not leak in;
# transport settings an operator may rely on for the mirror push are kept.
_KEPT_GIT_ENV = {"GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT", "GIT_ASKPASS", "GIT_PROXY_COMMAND"}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class BranchError(Exception):
    """Base class. A refused operation leaves the branch ref where it was."""


class UnknownCommitError(BranchError):
    """A revision that does not name a commit of this repository (or not one on the branch)."""


class UnknownPathError(BranchError):
    """A path that does not exist in the given commit."""


class PatchError(BranchError):
    """A hypothesis' patch was refused; `reason` says why in one line a proposer can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MergeConflictError(BranchError):
    """The change cannot be carried onto the head: a textual conflict, or a merged result that
    no longer parses. `conflicted_paths` names the files."""

    def __init__(self, reason: str, conflicted_paths: Sequence[str]) -> None:
        super().__init__(f"{reason} ({', '.join(conflicted_paths)})" if conflicted_paths else reason)
        self.reason = reason
        self.conflicted_paths = tuple(conflicted_paths)


class AlreadyAppliedError(BranchError):
    """The change (or the revert) is already contained in the head: nothing left to land."""


class RefMovedError(BranchError):
    """The branch head was not where the caller (or this module, a moment earlier) saw it."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"branch head moved: expected {expected[:12]}, found {actual[:12]}")
        self.expected = expected
        self.actual = actual


class MessageError(BranchError):
    """A commit identity or trailer that git cannot carry faithfully (bad key, newline in a name)."""


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchCheck:
    """An accepted patch, as git sees it after applying it to `base_commit`."""

    base_commit: str  # full sha
    changed_paths: tuple[str, ...]  # sorted
    files: Mapping[str, str]  # full new contents of the changed files
    tree_files: Mapping[str, str]  # every file of the resulting tree (what a work unit runs)
    patch: str  # the change regenerated by git: full-index unified diff, fixed context
    normalized: str  # canonical form for duplicate detection (see _normalized_change)
    tree: str  # sha of the resulting tree

    @property
    def fingerprint(self) -> str:
        """sha256 of base commit and normalized change: equal for the same change on the same base."""
        return hashlib.sha256(f"{self.base_commit}\n{self.normalized}".encode()).hexdigest()


@dataclass(frozen=True)
class RebaseOutcome:
    """A change carried onto the head. `patch` applies to `head`; `rebased` is False when the
    change was already against the head (then `patch` is git's regeneration of it)."""

    base_commit: str  # where the change was measured
    head: str  # where it now applies
    patch: str
    changed_paths: tuple[str, ...]
    files: Mapping[str, str]  # full new contents of the changed files
    tree_files: Mapping[str, str]  # every file of the merged tree
    tree: str
    rebased: bool


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    parents: tuple[str, ...]
    author: str
    author_email: str
    time_s: int  # author time, seconds since the epoch
    title: str
    body: str  # message without title and trailer block
    trailers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # key -> values, in order

    def trailer(self, key: str) -> str | None:
        """The first value of a trailer (keys compare case-insensitively, as git does)."""
        for name, values in self.trailers.items():
            if name.lower() == key.lower() and values:
                return values[0]
        return None


# ---------------------------------------------------------------------------------------------
# Git subprocess plumbing
# ---------------------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT_GIT_ENV}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        LANGUAGE="C",
    )
    return env


def _run_git(
    args: Sequence[str],
    *,
    git_dir: Path | None,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = LOCAL_GIT_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """Run git; never raises on a non-zero exit (callers decide what a status means)."""
    command = ["git"] + ([f"--git-dir={git_dir}"] if git_dir is not None else []) + list(args)
    full_env = _git_env()
    if env:
        full_env.update(env)
    try:
        return subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            env=full_env,
            timeout=timeout_s,
            check=False,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as err:
        raise BranchError("git is not installed (needed for the global branch)") from err
    except subprocess.TimeoutExpired as err:
        raise BranchError(f"git {args[0]} did not finish in {timeout_s:.0f} s") from err


def _stderr_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = proc.stderr.decode("utf-8", "replace").strip() or proc.stdout.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:500]


def _identity_env(name: str, email: str, *, date: str | None = None) -> dict[str, str]:
    env = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": SWARM_NAME,
        "GIT_COMMITTER_EMAIL": SWARM_EMAIL,
    }
    if date is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    return env


def _check_identity(name: str, email: str) -> None:
    for what, value in (("author name", name), ("author email", email)):
        if not value.strip() or any(c in value for c in "<>\n\r\0"):
            raise MessageError(f"{what} {value!r} is empty or contains <, > or a line break")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def trailer_token(text: str) -> str:
    """`text` made into a git trailer key (letters, digits, dashes): `Delta-Bpb-` + a class name."""
    token = re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")
    if not token:
        raise MessageError(f"{text!r} has nothing usable as a trailer key")
    return token


def format_message(title: str, body: str, trailers: Mapping[str, str | Sequence[str]]) -> str:
    """Title line, blank line, body, blank line, trailer block (`Key: value`, repeated keys allowed).

    Free text is tidied rather than refused (a confirmed win must not fail to land over a newline
    in its title); trailer keys are the coordinator's and must be valid git trailer tokens."""
    lines = [_one_line(title) or "(untitled)"]
    body_text = "\n".join(line.rstrip() for line in body.replace("\r\n", "\n").split("\n")).strip("\n")
    if body_text:
        lines += ["", body_text]
    trailer_lines = []
    for key, value in trailers.items():
        if not _TRAILER_KEY.match(key):
            raise MessageError(f"trailer key {key!r} is not a git trailer token")
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            item = _one_line(str(item))
            if not item:
                raise MessageError(f"trailer {key} has an empty value")
            trailer_lines.append(f"{key}: {item}")
    if trailer_lines:
        lines += [""] + trailer_lines
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# File checks and the canonical form of a change
# ---------------------------------------------------------------------------------------------


def _refuse_json_constant(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


def _validate_file(path: str, data: bytes) -> str:
    """Decode and check one new file; PatchError if the swarm could not run it."""
    limit = MAX_FILE_BYTES.get(path, DEFAULT_MAX_FILE_BYTES)
    if len(data) > limit:
        raise PatchError(f"the new {path} is {len(data)} bytes, over the {limit}-byte limit")
    if b"\0" in data:
        raise PatchError(f"the new {path} is binary (contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PatchError(f"the new {path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    if path.endswith(".py"):
        try:
            ast.parse(text, filename=path)
        except SyntaxError as err:
            raise PatchError(
                f"the new {path} does not parse as Python: {err.msg} (line {err.lineno})"
            ) from err
    elif path.endswith(".json"):
        try:
            json.loads(text, parse_constant=_refuse_json_constant)
        except ValueError as err:
            raise PatchError(f"the new {path} is not valid JSON: {err}") from err
    return text


@lru_cache(maxsize=256)
def _canonical_text(path: str, text: str) -> str:
    """A form of a file that ignores what cannot change a run: for Python the unparsed AST (drops
    comments, blank lines, quoting and literal spelling such as 1e-3 vs 0.001), for JSON the
    re-serialized value with sorted keys, otherwise the text without trailing whitespace."""
    if path.endswith(".py"):
        return ast.unparse(ast.parse(text)) + "\n"
    if path.endswith(".json"):
        return json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip("\n") + "\n"


def _normalized_change(paths: Sequence[str], old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """Unified diff (fixed context) between the canonical forms of the base and the new files.

    It depends only on the base and the result, not on how the patch was written (context length,
    hunk split, offsets), and is blind to comments and formatting. Empty means no semantic change."""
    chunks = []
    for path in sorted(paths):
        diff = difflib.unified_diff(
            _canonical_text(path, old[path]).splitlines(keepends=True),
            _canonical_text(path, new[path]).splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
            n=DIFF_CONTEXT_LINES,
        )
        chunks.append("".join(diff))
    return "".join(chunks)


def _strip_level(patch: str) -> int:
    """-p1 for `a/` `b/` prefixed diffs (git's), -p0 when a target path has no directory prefix."""
    targets = []
    for line in patch.splitlines():
        if line.startswith("+++ "):
            target = line[4:].split("\t", 1)[0].strip()
            if target != "/dev/null":
                targets.append(target)
    return 0 if targets and any("/" not in target for target in targets) else 1


def _describe_summary(line: str) -> str:
    """`git apply --summary` lines ("create mode 100644 x", "rename a => b (90%)") in words."""
    words = line.split()
    if not words:
        return line
    if words[0] == "mode":  # "mode change 100644 => 100755 path"
        return f"changes the mode of {words[-1]}"
    if words[0] in ("create", "delete"):  # "create mode 100644 path" (or "create path")
        return f"{words[0]}s {words[-1]}"
    if words[0] in ("rename", "copy"):  # "rename a => b (100%)"
        return f"{'renames' if words[0] == 'rename' else 'copies'} {' '.join(words[1:])}"
    return line


def _check_rev_syntax(rev: str) -> None:
    if not isinstance(rev, str) or not rev or rev.startswith("-") or len(rev) > 256:
        raise UnknownCommitError(f"not a revision: {rev!r}")
    if any(c.isspace() or c in "\0:" for c in rev):
        raise UnknownCommitError(f"not a revision: {rev!r}")


# ---------------------------------------------------------------------------------------------
# The branch
# ---------------------------------------------------------------------------------------------


class GlobalBranch:
    """The swarm's global branch in a bare repository. Construct with `open` or `restore`."""

    def __init__(self, repo_dir: Path, branch: str) -> None:
        self.repo_dir = Path(repo_dir).resolve()
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self._lock = threading.RLock()
        self._ref_path = str(self.repo_dir / self.ref)
        self._ref_seen: tuple[tuple[int, int, int], str] | None = None  # (inode, mtime, size) -> sha

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        repo_dir: Path,
        branch: str = DEFAULT_BRANCH,
        initial_files: Mapping[str, str] | None = None,
    ) -> GlobalBranch:
        """Open the repository at `repo_dir`, creating it (and the branch's first commit with
        `initial_files`) when absent. On an existing branch `initial_files` is ignored."""
        repo_dir = Path(repo_dir)
        _check_branch_name(branch)
        if not _is_repository(repo_dir):
            if repo_dir.exists() and any(repo_dir.iterdir()):
                raise BranchError(f"{repo_dir} exists, is not empty and is not a git repository")
            _init_repository(repo_dir, branch)
        opened = cls(repo_dir, branch)
        if opened._read_ref() is None:
            if not initial_files:
                raise BranchError(f"branch {branch} does not exist and no initial files were given")
            opened._create_branch(initial_files)
        return opened

    @classmethod
    def restore(cls, bundle_path: Path, repo_dir: Path, branch: str = DEFAULT_BRANCH) -> GlobalBranch:
        """Rebuild a repository from a bundle written by `bundle`. `repo_dir` must be absent or
        empty; the repository appears there only once complete."""
        bundle_path = Path(bundle_path).resolve()
        repo_dir = Path(repo_dir)
        _check_branch_name(branch)
        if repo_dir.exists() and (not repo_dir.is_dir() or any(repo_dir.iterdir())):
            raise BranchError(f"refusing to restore over {repo_dir}: it exists and is not empty")
        if not bundle_path.is_file():
            raise BranchError(f"no bundle at {bundle_path}")
        repo_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.restore-", dir=repo_dir.parent))
        try:
            _init_repository(staging, branch)
            heads = _run_git(["bundle", "list-heads", str(bundle_path)], git_dir=staging)
            refs = [line.split()[1] for line in heads.stdout.decode().splitlines() if len(line.split()) == 2]
            if heads.returncode != 0 or not refs:
                raise BranchError(f"{bundle_path} is not a readable git bundle: {_stderr_line(heads)}")
            if f"refs/heads/{branch}" in refs:
                source = f"refs/heads/{branch}"
            elif len(refs) == 1:
                source = refs[0]  # a bundle of the same history under another branch name
            else:
                raise BranchError(f"bundle holds several refs and none is refs/heads/{branch}")
            fetched = _run_git(
                ["fetch", "--quiet", "--no-tags", str(bundle_path), f"{source}:refs/heads/{branch}"],
                git_dir=staging,
            )
            if fetched.returncode != 0:
                raise BranchError(f"could not restore from {bundle_path}: {_stderr_line(fetched)}")
            if repo_dir.exists():
                repo_dir.rmdir()
            os.replace(staging, repo_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls.open(repo_dir, branch)

    # -- reading -----------------------------------------------------------------------------

    def head(self) -> str:
        """The sha of the branch's newest commit (read from git every time)."""
        head = self._read_ref()
        if head is None:
            raise BranchError(f"branch {self.branch} is missing from {self.repo_dir}")
        return head

    def resolve(self, rev: str) -> str:
        """Full sha of the commit `rev` names; UnknownCommitError if there is none."""
        _check_rev_syntax(rev)
        proc = self._git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"])
        if proc.returncode != 0:
            raise UnknownCommitError(f"unknown commit {rev!r}")
        return proc.stdout.decode().strip()

    def is_ancestor(self, a: str, b: str) -> bool:
        """True when commit `a` is `b` or one of its ancestors."""
        sha_a, sha_b = self.resolve(a), self.resolve(b)
        proc = self._git(["merge-base", "--is-ancestor", sha_a, sha_b])
        if proc.returncode not in (0, 1):
            raise BranchError(f"merge-base failed: {_stderr_line(proc)}")
        return proc.returncode == 0

    def read_file(self, commit: str, path: str) -> str:
        """Contents of `path` at `commit` (UTF-8)."""
        files = self._tree_entries(self.resolve(commit))
        if path not in files:
            raise UnknownPathError(f"{path} does not exist in {commit[:12]}")
        return self._read_blobs([files[path][1]])[0].decode("utf-8")

    def files_at(self, commit: str) -> dict[str, str]:
        """Every file of `commit`'s tree, path -> contents."""
        return self._files_of_tree(self.resolve(commit))

    def log(self, limit: int | None = 100, rev: str | None = None) -> list[CommitInfo]:
        """The branch's commits, newest first (first-parent order is the only order: history is
        linear). Trailers are parsed by git (`%(trailers)`)."""
        start = self.resolve(rev) if rev is not None else self.head()
        # Fields separated by US (0x1f); -z separates commits by NUL, which messages cannot hold.
        fmt = "%H%x1f%P%x1f%an%x1f%ae%x1f%at%x1f%s%x1f%B%x1f%(trailers:only,unfold)"
        args = ["log", "-z", f"--format={fmt}"] + ([f"--max-count={int(limit)}"] if limit is not None else [])
        proc = self._git(args + [start, "--"])
        if proc.returncode != 0:
            raise BranchError(f"git log failed: {_stderr_line(proc)}")
        commits = []
        for record in proc.stdout.decode("utf-8", "replace").split("\0"):
            if record.strip():
                commits.append(_parse_log_record(record))
        return commits

    def commit_info(self, rev: str) -> CommitInfo:
        """One commit, as `log` describes it."""
        return self.log(limit=1, rev=rev)[0]

    # -- patches -----------------------------------------------------------------------------

    def check_patch(
        self,
        base_commit: str,
        patch: str,
        allowed_paths: Collection[str] = DEFAULT_ALLOWED_PATHS,
    ) -> PatchCheck:
        """Apply `patch` to `base_commit` (a commit on the branch) in a temporary index and check
        the result. Refuses with PatchError when it is empty or not a diff, is over the size limit,
        does not apply cleanly, touches a path outside `allowed_paths`, creates, deletes, renames
        or re-modes a file, is binary, leaves train.py unparsable or profiles.json invalid, or
        changes only comments and formatting (nothing a run could measure)."""
        base = self._resolve_on_branch(base_commit)
        tree = self._apply_to_tree(base, patch, allowed_paths)
        return self._describe_change(base, tree, allowed_paths)

    def diff_files(self, base_commit: str, new_files: Mapping[str, str]) -> str:
        """A unified diff turning `base_commit`'s files into `new_files` (only existing paths may
        be given). Empty when nothing changes. The result is what check_patch accepts."""
        base = self.resolve(base_commit)
        entries = self._tree_entries(base)
        unknown = sorted(set(new_files) - set(entries))
        if unknown:
            raise UnknownPathError(f"not in {base[:12]}: {', '.join(unknown)}")
        with self._temporary_index(base) as index_env:
            for path, text in sorted(new_files.items()):
                blob = self._hash_blob(text.encode("utf-8"))
                mode = entries[path][0]
                proc = self._git(["update-index", "--cacheinfo", f"{mode},{blob},{path}"], env=index_env)
                if proc.returncode != 0:
                    raise BranchError(f"update-index failed: {_stderr_line(proc)}")
            tree = self._write_tree(index_env)
        return self._diff_trees(base, tree)

    def rebase_patch(
        self,
        base_commit: str,
        patch: str,
        allowed_paths: Collection[str] = DEFAULT_ALLOWED_PATHS,
    ) -> RebaseOutcome:
        """Carry the change (base -> base+patch) onto the current head with a three-way merge.
        Raises MergeConflictError (textual conflict, or a merged file that no longer parses) or
        AlreadyAppliedError (the head already contains the change)."""
        base = self._resolve_on_branch(base_commit)
        head = self.head()
        tree = self._apply_to_tree(base, patch, allowed_paths)
        return self._carry_onto(base, tree, head, allowed_paths)

    # -- landing -----------------------------------------------------------------------------

    def commit_win(
        self,
        base_commit: str,
        patch: str,
        *,
        title: str,
        body: str,
        author_name: str,
        author_email: str,
        trailers: Mapping[str, str | Sequence[str]],
        expected_head: str | None = None,
        allowed_paths: Collection[str] = DEFAULT_ALLOWED_PATHS,
    ) -> str:
        """Land a confirmed change on the head as one commit authored by the proposer; returns
        its sha. The change is three-way merged when `base_commit` is older than the head (a
        conflicting one is refused). Give `expected_head` (the head the change was re-verified
        on) to refuse with RefMovedError if anything landed since. The ref moves by
        compare-and-swap, so a concurrent move is caught too."""
        _check_identity(author_name, author_email)
        message = format_message(title, body, trailers)
        with self._lock:
            head = self.head()
            if expected_head is not None and self.resolve(expected_head) != head:
                raise RefMovedError(self.resolve(expected_head), head)
            base = self._resolve_on_branch(base_commit)
            tree = self._apply_to_tree(base, patch, allowed_paths)
            outcome = self._carry_onto(base, tree, head, allowed_paths)
            commit = self._commit_tree(
                outcome.tree, [head], message, _identity_env(author_name, author_email)
            )
            self._move_ref(commit, head, f"win: {_one_line(title)[:80]}")
            return commit

    def revert(self, commit: str, reason: str, trailers: Mapping[str, str | Sequence[str]]) -> str:
        """Undo `commit` (on the branch, one parent) with a new commit on the head whose message
        says why. The undo is a three-way merge with the commit as base, so later unrelated
        changes stay. Adds a `Reverts: <sha>` trailer. Returns the new commit's sha."""
        with self._lock:
            target = self._resolve_on_branch(commit)
            info = self.commit_info(target)
            if len(info.parents) != 1:
                raise BranchError(f"cannot revert {target[:12]}: it has {len(info.parents)} parents")
            head = self.head()
            merged, conflicts, messages = self._merge_trees(
                self._tree_of(target), self._tree_of(head), self._tree_of(info.parents[0])
            )
            if conflicts:
                raise MergeConflictError(
                    f"reverting {target[:12]} conflicts with later changes: {messages}", conflicts
                )
            if merged == self._tree_of(head):
                raise AlreadyAppliedError(f"the head no longer contains the change of {target[:12]}")
            self._validate_tree(merged, head, "reverted")
            all_trailers: dict[str, str | Sequence[str]] = {"Reverts": target}
            all_trailers.update(trailers)
            body = f"This reverts commit {target}.\n\nReason: {_one_line(reason) or 'not given'}"
            message = format_message(f'Revert "{info.title}"', body, all_trailers)
            new = self._commit_tree(merged, [head], message, _identity_env(SWARM_NAME, SWARM_EMAIL))
            self._move_ref(new, head, f"revert {target[:12]}")
            return new

    # -- backup and mirror -------------------------------------------------------------------

    def bundle(self, path: Path) -> None:
        """Write a git bundle of the branch to `path` (atomically: a complete file or none)."""
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.partial")
        with self._lock:
            proc = self._git(["bundle", "create", "--quiet", str(temporary), self.ref])
            if proc.returncode != 0:
                temporary.unlink(missing_ok=True)
                raise BranchError(f"git bundle failed: {_stderr_line(proc)}")
            os.replace(temporary, path)

    def push_mirror(self, remote_url: str) -> None:
        """Push the branch to `remote_url` (same branch name). A fast-forward only: the branch's
        history never rewinds, so a refused push means someone else wrote to the mirror."""
        if not remote_url or remote_url.startswith("-"):
            raise BranchError(f"not a remote: {remote_url!r}")
        with self._lock:
            proc = self._git(
                ["push", "--quiet", "--porcelain", remote_url, f"{self.ref}:{self.ref}"],
                timeout_s=PUSH_TIMEOUT_S,
            )
        if proc.returncode != 0:
            raise BranchError(f"mirror push to {remote_url} failed: {_stderr_line(proc)}")

    def gc(self) -> None:
        """Pack objects and prune unreferenced ones older than git's grace period (two weeks):
        patch checks and merges leave small loose objects behind. Safe while the branch is used."""
        with self._lock:
            proc = self._git(["gc", "--quiet"], timeout_s=PUSH_TIMEOUT_S)
        if proc.returncode != 0:
            raise BranchError(f"git gc failed: {_stderr_line(proc)}")

    # -- internals ---------------------------------------------------------------------------

    def _git(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float = LOCAL_GIT_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[bytes]:
        return _run_git(args, git_dir=self.repo_dir, stdin=stdin, env=env, timeout_s=timeout_s)

    def _read_ref(self) -> str | None:
        # The loose ref file is what update-ref writes (atomically, by rename): reading it costs a
        # file read instead of a git process on every head() (hot: every lease and report asks).
        # Packed or symbolic refs fall back to git.
        # update-ref replaces the file by rename, so a new sha always comes with a new inode:
        # while the file's identity is unchanged, the sha read last time still stands (one stat
        # instead of an open and a read on every call).
        try:
            stat = os.stat(self._ref_path)
            identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            seen = self._ref_seen
            if seen is not None and seen[0] == identity:
                return seen[1]
            with open(self._ref_path, "rb") as ref_file:
                text = ref_file.read().decode("ascii", "replace").strip()
        except OSError:
            identity, text = None, ""
        if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
            if identity is not None:
                self._ref_seen = (identity, text)
            return text
        proc = self._git(["rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}"])
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def _resolve_on_branch(self, rev: str) -> str:
        sha = self.resolve(rev)
        if not self.is_ancestor(sha, self.head()):
            raise UnknownCommitError(f"commit {sha[:12]} is not on branch {self.branch}")
        return sha

    def _tree_of(self, commit: str) -> str:
        proc = self._git(["rev-parse", "--verify", f"{commit}^{{tree}}"])
        if proc.returncode != 0:
            raise UnknownCommitError(f"unknown commit {commit!r}")
        return proc.stdout.decode().strip()

    def _tree_entries(self, treeish: str) -> dict[str, tuple[str, str]]:
        """path -> (mode, blob sha) for every file under `treeish`."""
        proc = self._git(["ls-tree", "-r", "-z", "--full-tree", treeish])
        if proc.returncode != 0:
            raise UnknownCommitError(f"cannot list {treeish[:12]}: {_stderr_line(proc)}")
        entries = {}
        for item in proc.stdout.decode("utf-8").split("\0"):
            if item:
                meta, path = item.split("\t", 1)
                mode, kind, sha = meta.split()
                if kind == "blob":
                    entries[path] = (mode, sha)
        return entries

    def _read_blobs(self, shas: Sequence[str]) -> list[bytes]:
        """Contents of many blobs with one `cat-file --batch`."""
        if not shas:
            return []
        proc = self._git(["cat-file", "--batch"], stdin="".join(f"{sha}\n" for sha in shas).encode())
        if proc.returncode != 0:
            raise BranchError(f"cat-file failed: {_stderr_line(proc)}")
        out, blobs, pos = proc.stdout, [], 0
        for sha in shas:
            end = out.index(b"\n", pos)
            header = out[pos:end].decode().split()
            if len(header) != 3:
                raise BranchError(f"object {sha} is missing from the repository")
            size = int(header[2])
            blobs.append(out[end + 1 : end + 1 + size])
            pos = end + 1 + size + 1
        return blobs

    def _files_of_tree(self, treeish: str) -> dict[str, str]:
        entries = self._tree_entries(treeish)
        paths = sorted(entries)
        blobs = self._read_blobs([entries[path][1] for path in paths])
        return {path: blob.decode("utf-8") for path, blob in zip(paths, blobs, strict=True)}

    def _hash_blob(self, data: bytes) -> str:
        proc = self._git(["hash-object", "-w", "--stdin"], stdin=data)
        if proc.returncode != 0:
            raise BranchError(f"hash-object failed: {_stderr_line(proc)}")
        return proc.stdout.decode().strip()

    @contextmanager
    def _temporary_index(self, treeish: str | None) -> Iterator[dict[str, str]]:
        """A private index (loaded with `treeish`), so no check touches shared state."""
        with tempfile.TemporaryDirectory(prefix="autoswarm-index-") as scratch:
            index_env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            if treeish is not None:
                proc = self._git(["read-tree", treeish], env=index_env)
                if proc.returncode != 0:
                    raise BranchError(f"read-tree {treeish[:12]} failed: {_stderr_line(proc)}")
            yield index_env

    def _write_tree(self, index_env: Mapping[str, str]) -> str:
        proc = self._git(["write-tree"], env=index_env)
        if proc.returncode != 0:
            raise BranchError(f"write-tree failed: {_stderr_line(proc)}")
        return proc.stdout.decode().strip()

    def _apply_to_tree(self, base: str, patch: str, allowed_paths: Collection[str]) -> str:
        """The tree of `base` with `patch` applied; PatchError for every kind of unfit patch."""
        if not isinstance(patch, str):
            raise PatchError("the patch must be text")
        data = patch.encode("utf-8")
        if len(data) > MAX_PATCH_BYTES:
            raise PatchError(f"the patch is {len(data)} bytes, over the {MAX_PATCH_BYTES}-byte limit")
        if not patch.strip():
            raise PatchError("the patch is empty")
        if not patch.endswith("\n"):
            data += b"\n"  # a final hunk line without its newline is still that line
        for line in patch.splitlines():
            if line.startswith("GIT binary patch") or (
                line.startswith("Binary files ") and line.endswith(" differ")
            ):
                raise PatchError("binary change (only text changes are accepted)")
        strip = f"-p{_strip_level(patch)}"
        # What the patch claims to do, before trying it: numstat (paths, binary) and summary
        # (creations, deletions, renames, mode changes).
        stat = self._git(["apply", "--numstat", "--summary", strip, "-"], stdin=data)
        if stat.returncode != 0:
            if "No valid patches" in _stderr_line(stat):
                raise PatchError("not a unified diff: it holds no file headers and hunks")
            raise PatchError(f"not a usable unified diff: {_stderr_line(stat)}")
        touched, structural = [], []
        for line in stat.stdout.decode("utf-8", "replace").splitlines():
            if line.startswith(" "):
                structural.append(line.strip())
            elif line.strip():
                added, deleted, path = line.split("\t", 2)
                if added == "-" and deleted == "-":
                    raise PatchError(f"binary change to {path} (only text changes are accepted)")
                touched.append(path)
        if structural:
            raise PatchError(
                "only content changes to existing files are accepted; this patch "
                + "; ".join(_describe_summary(line) for line in structural)
            )
        if not touched:
            raise PatchError("the patch is empty: it holds no file changes")
        outside = sorted(set(touched) - set(allowed_paths))
        if outside:
            raise PatchError(
                f"changes paths it may not: {', '.join(outside)} (allowed: {', '.join(sorted(allowed_paths))})"
            )
        with self._temporary_index(base) as index_env:
            applied = self._git(
                ["apply", "--cached", "--whitespace=nowarn", strip, "-"], stdin=data, env=index_env
            )
            if applied.returncode != 0:
                raise PatchError(f"does not apply cleanly to {base[:12]}: {_stderr_line(applied)}")
            return self._write_tree(index_env)

    def _changed(self, old_treeish: str, new_treeish: str) -> list[tuple[str, str, str, str]]:
        """(status, old mode, new mode, path) of every difference between two trees."""
        proc = self._git(["diff-tree", "-r", "-z", "--no-renames", old_treeish, new_treeish])
        if proc.returncode != 0:
            raise BranchError(f"diff-tree failed: {_stderr_line(proc)}")
        fields = proc.stdout.decode("utf-8").split("\0")
        changes = []
        for meta, path in zip(fields[0::2], fields[1::2], strict=False):
            if meta.startswith(":"):
                old_mode, new_mode, _old, _new, status = meta[1:].split()
                changes.append((status, old_mode, new_mode, path))
        return changes

    def _diff_trees(self, old_treeish: str, new_treeish: str) -> str:
        proc = self._git(
            [
                "diff-tree",
                "-p",
                "--full-index",
                "--no-renames",
                f"-U{DIFF_CONTEXT_LINES}",
                old_treeish,
                new_treeish,
            ]
        )
        if proc.returncode != 0:
            raise BranchError(f"diff-tree failed: {_stderr_line(proc)}")
        return proc.stdout.decode("utf-8")

    def _validate_tree(self, tree: str, against: str, what: str) -> dict[str, str]:
        """Check the files `tree` changes relative to `against`; MergeConflictError if unfit."""
        paths = [path for _s, _o, _n, path in self._changed(against, tree)]
        files = self._files_of_tree(tree)
        for path in paths:
            try:
                _validate_file(path, files[path].encode("utf-8"))
            except PatchError as err:
                raise MergeConflictError(f"the {what} result is unfit: {err.reason}", [path]) from err
        return files

    def _describe_change(self, base: str, tree: str, allowed_paths: Collection[str]) -> PatchCheck:
        changes = self._changed(base, tree)
        if not changes:
            raise PatchError(f"the patch is empty: applying it to {base[:12]} changes nothing")
        for status, old_mode, new_mode, path in changes:
            if status != "M" or old_mode != new_mode:
                raise PatchError(
                    f"{path}: only content changes to existing files are accepted (git status {status})"
                )
            if path not in allowed_paths:
                raise PatchError(f"changes a path it may not: {path}")
        paths = tuple(sorted(path for *_rest, path in changes))
        entries = self._tree_entries(tree)
        new_blobs = self._read_blobs([entries[path][1] for path in paths])
        new = {path: _validate_file(path, blob) for path, blob in zip(paths, new_blobs, strict=True)}
        old_entries = self._tree_entries(base)
        old = {
            path: blob.decode("utf-8")
            for path, blob in zip(paths, self._read_blobs([old_entries[p][1] for p in paths]), strict=True)
        }
        normalized = _normalized_change(paths, old, new)
        if not normalized:
            raise PatchError("changes only comments or formatting: nothing a run could measure")
        return PatchCheck(
            base_commit=base,
            changed_paths=paths,
            files=new,
            tree_files=self._files_of_tree(tree),
            patch=self._diff_trees(base, tree),
            normalized=normalized,
            tree=tree,
        )

    def _carry_onto(self, base: str, tree: str, head: str, allowed_paths: Collection[str]) -> RebaseOutcome:
        """The change base -> tree, checked as a hypothesis, then carried onto `head` (merged
        when base != head)."""
        check = self._describe_change(base, tree, allowed_paths)
        if base == head:
            return RebaseOutcome(
                base_commit=base,
                head=head,
                patch=check.patch,
                changed_paths=check.changed_paths,
                files=check.files,
                tree_files=check.tree_files,
                tree=tree,
                rebased=False,
            )
        head_tree = self._tree_of(head)
        merged, conflicts, messages = self._merge_trees(self._tree_of(base), head_tree, tree)
        if conflicts:
            raise MergeConflictError(f"conflicts with the head {head[:12]}: {messages}", conflicts)
        if merged == head_tree:
            raise AlreadyAppliedError(f"the head {head[:12]} already contains this change")
        files = self._validate_tree(merged, head, "merged")
        paths = tuple(sorted(path for *_r, path in self._changed(head, merged)))
        return RebaseOutcome(
            base_commit=base,
            head=head,
            patch=self._diff_trees(head, merged),
            changed_paths=paths,
            files={path: files[path] for path in paths},
            tree_files=files,
            tree=merged,
            rebased=True,
        )

    def _merge_trees(self, base_tree: str, ours_tree: str, theirs_tree: str) -> tuple[str, list[str], str]:
        """Three-way merge with git's ort machinery: (merged tree, conflicted paths, messages)."""
        env = _identity_env(SWARM_NAME, SWARM_EMAIL, date=SYNTHETIC_DATE)
        root = self._commit_tree(base_tree, [], "merge base\n", env)
        ours = self._commit_tree(ours_tree, [root], "ours\n", env)
        theirs = self._commit_tree(theirs_tree, [root], "theirs\n", env)
        proc = self._git(["merge-tree", "--write-tree", "--name-only", ours, theirs])
        if proc.returncode not in (0, 1):
            raise BranchError(f"merge-tree failed: {_stderr_line(proc)}")
        # Output: the tree; on conflict, then the conflicted paths, a blank line, git's messages.
        lines = proc.stdout.decode("utf-8", "replace").split("\n")
        merged = lines[0].strip()
        if not _OID.match(merged):
            raise BranchError(f"merge-tree gave no tree: {_stderr_line(proc)}")
        if proc.returncode == 0:
            return merged, [], ""
        blank = lines.index("", 1) if "" in lines[1:] else len(lines)
        conflicts = sorted({line.strip() for line in lines[1:blank] if line.strip()})
        notes = [line.strip() for line in lines[blank:] if line.startswith("CONFLICT")]
        return merged, conflicts or ["(unknown)"], "; ".join(notes) or "merge conflict"

    def _commit_tree(self, tree: str, parents: Sequence[str], message: str, env: Mapping[str, str]) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        proc = self._git(args + ["-F", "-"], stdin=message.encode("utf-8"), env=env)
        if proc.returncode != 0:
            raise BranchError(f"commit-tree failed: {_stderr_line(proc)}")
        return proc.stdout.decode().strip()

    def _move_ref(self, new: str, old: str, reason: str) -> None:
        """Compare-and-swap the branch ref from `old` to `new`; RefMovedError if it was not `old`."""
        proc = self._git(["update-ref", "-m", f"autoswarm {reason}", self.ref, new, old])
        if proc.returncode != 0:
            actual = self._read_ref() or _ZERO_OID
            if actual != old:
                raise RefMovedError(old, actual)
            raise BranchError(f"could not move {self.ref}: {_stderr_line(proc)}")

    def _create_branch(self, initial_files: Mapping[str, str]) -> None:
        with self._lock, self._temporary_index(None) as index_env:
            for path, text in sorted(initial_files.items()):
                if not path or path.startswith("/") or ".." in Path(path).parts:
                    raise BranchError(f"not a repository path: {path!r}")
                blob = self._hash_blob(text.encode("utf-8"))
                proc = self._git(
                    ["update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"], env=index_env
                )
                if proc.returncode != 0:
                    raise BranchError(f"update-index failed: {_stderr_line(proc)}")
            tree = self._write_tree(index_env)
            body = "The trainer's files every class starts from:\n" + "\n".join(
                f"- {path}" for path in sorted(initial_files)
            )
            message = format_message("Start the global branch", body, {"Autoswarm-Event": "start"})
            commit = self._commit_tree(tree, [], message, _identity_env(SWARM_NAME, SWARM_EMAIL))
            self._move_ref(commit, _ZERO_OID, "start")


# ---------------------------------------------------------------------------------------------
# Module helpers
# ---------------------------------------------------------------------------------------------


def _check_branch_name(branch: str) -> None:
    proc = _run_git(["check-ref-format", "--branch", branch], git_dir=None)
    if not branch or branch.startswith("-") or proc.returncode != 0:
        raise BranchError(f"not a valid branch name: {branch!r}")


def _is_repository(repo_dir: Path) -> bool:
    if not (repo_dir / "HEAD").is_file():
        return False
    return _run_git(["rev-parse", "--git-dir"], git_dir=repo_dir).returncode == 0


def _init_repository(repo_dir: Path, branch: str) -> None:
    repo_dir.mkdir(parents=True, exist_ok=True)
    proc = _run_git(["init", "--quiet", "--bare", f"--initial-branch={branch}", str(repo_dir)], git_dir=None)
    if proc.returncode != 0:
        raise BranchError(f"git init {repo_dir} failed: {_stderr_line(proc)}")
    settings = {
        "core.logAllRefUpdates": "always",  # a reflog, so an operator can see every ref move
        "core.fsync": "committed",  # objects and refs reach the disk before the ref names them
    }
    for key, value in settings.items():
        proc = _run_git(["config", key, value], git_dir=repo_dir)
        if proc.returncode != 0:
            raise BranchError(f"git config {key} failed: {_stderr_line(proc)}")


def _parse_log_record(record: str) -> CommitInfo:
    sha, parents, name, email, at, subject, message, trailer_block = record.lstrip("\n").split("\x1f", 7)
    trailers: dict[str, list[str]] = {}
    for line in trailer_block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            trailers.setdefault(key.strip(), []).append(value.strip())
    paragraphs = message.strip("\n").split("\n\n")
    body_paragraphs = paragraphs[1:]
    if trailers and body_paragraphs:
        body_paragraphs = body_paragraphs[:-1]  # git parsed the last paragraph as the trailer block
    return CommitInfo(
        sha=sha,
        parents=tuple(parents.split()),
        author=name,
        author_email=email,
        time_s=int(at),
        title=subject,
        body="\n\n".join(body_paragraphs).strip("\n"),
        trailers={key: tuple(values) for key, values in trailers.items()},
    )
