"""The global branch against real git in temporary directories."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from coordinator import branch as branch_module
from coordinator.branch import (
    AlreadyAppliedError,
    BranchError,
    GlobalBranch,
    MergeConflictError,
    MessageError,
    PatchError,
    RefMovedError,
    UnknownCommitError,
    UnknownPathError,
    format_message,
    trailer_token,
)

TRAIN_PY = '''"""A stand-in for the trainer: a constants block at the top, code far below it."""

import math

# ---------------------------------------------------------------------------
# Hyperparameters: hypotheses may change these
# ---------------------------------------------------------------------------
DEPTH = 8  # transformer layers
MATRIX_LR = 0.04  # Muon learning rate
EMBEDDING_LR = 0.6  # AdamW learning rate of the embedding
WARMDOWN_RATIO = 0.5  # share of the budget spent cooling down
WINDOW_PATTERN = "SSSL"  # sliding/full attention per layer


def lr_multiplier(progress):
    """Constant, then a linear warmdown to zero."""
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    return (1.0 - progress) / WARMDOWN_RATIO


def loss_at(step):
    return 4.0 * math.exp(-0.01 * step) + 1.0


def main():
    loss = 0.0
    for step in range(100):
        loss = loss_at(step) * lr_multiplier(step / 100)
    print("---")
    print(f"val_bpb: {loss:.6f}")


if __name__ == "__main__":
    main()
'''

PROFILES = {"cpu": {"DEPTH": 2, "DEVICE_BATCH_SIZE": 4}, "h100-80g": {"DEPTH": 8, "DEVICE_BATCH_SIZE": 128}}
PROFILES_JSON = json.dumps(PROFILES, indent=2) + "\n"
INITIAL = {"train.py": TRAIN_PY, "profiles.json": PROFILES_JSON}


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="outsider",
        GIT_AUTHOR_EMAIL="outsider@example.org",
        GIT_COMMITTER_NAME="outsider",
        GIT_COMMITTER_EMAIL="outsider@example.org",
    )
    return env


def git(*args: str, cwd: Path | None = None, git_dir: Path | None = None, stdin: str | None = None) -> str:
    return git_raw(*args, cwd=cwd, git_dir=git_dir, stdin=stdin).strip()


def git_raw(
    *args: str, cwd: Path | None = None, git_dir: Path | None = None, stdin: str | None = None
) -> str:
    command = ["git"] + ([f"--git-dir={git_dir}"] if git_dir else []) + list(args)
    return subprocess.run(
        command, cwd=cwd, input=stdin, capture_output=True, text=True, env=git_env(), check=True
    ).stdout


def make_diff(old: str, new: str, path: str = "train.py", context: int = 3) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
            n=context,
        )
    )


def win_trailers(hypothesis: str, *results: str) -> dict[str, str | list[str]]:
    return {"Hypothesis-Id": hypothesis, "Result-Id": list(results), "Delta-Bpb-cpu": "-0.0042 (z=3.4, n=4)"}


@pytest.fixture
def repo(tmp_path: Path) -> GlobalBranch:
    return GlobalBranch.open(tmp_path / "global.git", initial_files=INITIAL)


def land(repo: GlobalBranch, base: str, old: str, new: str, title: str, path: str = "train.py") -> str:
    return repo.commit_win(
        base,
        make_diff(old, new, path),
        title=title,
        body=f"cpu: {title}",
        author_name="alice",
        author_email="alice@example.org",
        trailers=win_trailers(title.replace(" ", "-"), "r1", "r2"),
    )


# ---------------------------------------------------------------------------------------------
# Opening and reading
# ---------------------------------------------------------------------------------------------


def test_open_creates_the_branch_and_reopens_it(tmp_path: Path):
    repo_dir = tmp_path / "data" / "global.git"
    repo = GlobalBranch.open(repo_dir, initial_files=INITIAL)
    head = repo.head()
    assert len(head) == 40
    assert repo.files_at(head) == INITIAL
    first = repo.log()
    assert len(first) == 1 and first[0].parents == () and first[0].author == "autoswarm"

    # Reopening keeps the history and ignores other initial files.
    again = GlobalBranch.open(repo_dir, initial_files={"train.py": "x = 1\n"})
    assert again.head() == head
    assert again.read_file(head, "train.py") == TRAIN_PY
    # Operators read it with plain git.
    assert git("log", "--format=%s", "global", git_dir=repo_dir) == "Start the global branch"
    assert git("rev-parse", "--is-bare-repository", git_dir=repo_dir) == "true"


def test_head_follows_every_move_of_the_ref_and_packed_refs(repo: GlobalBranch):
    """head() keeps the sha it read while the ref file is unchanged; a move by anyone (here plain
    git, as an operator would) replaces the file and is seen at once, and so is packing."""
    first = repo.head()
    assert repo.head() == first  # from the remembered read
    tree = git("rev-parse", f"{first}^{{tree}}", git_dir=repo.repo_dir)
    moved = []
    for index in range(3):  # quick successive moves: each is a new file, seen immediately
        commit = git("commit-tree", tree, "-p", moved[-1] if moved else first, "-m", f"operator {index}",
                     git_dir=repo.repo_dir)
        git("update-ref", repo.ref, commit, git_dir=repo.repo_dir)
        moved.append(commit)
        assert repo.head() == commit
    git("pack-refs", "--all", git_dir=repo.repo_dir)  # no loose file any more: git answers
    assert not (repo.repo_dir / repo.ref).exists()
    assert repo.head() == moved[-1]
    git("update-ref", repo.ref, first, git_dir=repo.repo_dir)
    assert repo.head() == first


def test_open_refuses_what_it_cannot_own(tmp_path: Path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a repository\n")
    with pytest.raises(BranchError, match="not a git repository"):
        GlobalBranch.open(junk, initial_files=INITIAL)
    with pytest.raises(BranchError, match="no initial files"):
        GlobalBranch.open(tmp_path / "fresh.git")
    with pytest.raises(BranchError, match="branch name"):
        GlobalBranch.open(tmp_path / "bad.git", branch="no..dots", initial_files=INITIAL)


def test_open_a_second_branch_in_the_same_repository(tmp_path: Path):
    first = GlobalBranch.open(tmp_path / "g.git", initial_files=INITIAL)
    other = GlobalBranch.open(tmp_path / "g.git", branch="staging", initial_files={"train.py": "x = 1\n"})
    assert other.head() != first.head()
    assert other.files_at(other.head()) == {"train.py": "x = 1\n"}


def test_resolve_and_reads_refuse_unknown_things(repo: GlobalBranch):
    head = repo.head()
    assert repo.resolve("global") == head
    assert repo.resolve(head[:10]) == head
    for bad in ["0" * 40, "nope", "-p", "", "global:train.py", "a b"]:
        with pytest.raises(UnknownCommitError):
            repo.resolve(bad)
    tree = git("rev-parse", "global^{tree}", git_dir=repo.repo_dir)
    with pytest.raises(UnknownCommitError):
        repo.resolve(tree)  # a tree is not a commit
    with pytest.raises(UnknownPathError):
        repo.read_file(head, "missing.py")
    with pytest.raises(UnknownCommitError):
        repo.files_at("f" * 40)
    assert repo.is_ancestor(head, head)


# ---------------------------------------------------------------------------------------------
# Patch checks
# ---------------------------------------------------------------------------------------------


def test_check_patch_accepts_a_good_diff(repo: GlobalBranch):
    head = repo.head()
    new = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
    check = repo.check_patch(head, make_diff(TRAIN_PY, new))
    assert check.base_commit == head
    assert check.changed_paths == ("train.py",)
    assert check.files == {"train.py": new}
    assert check.tree_files == {"train.py": new, "profiles.json": PROFILES_JSON}
    assert check.patch.startswith("diff --git a/train.py b/train.py\n")
    assert "-MATRIX_LR = 0.04" in check.normalized and "+MATRIX_LR = 0.05" in check.normalized
    assert len(check.fingerprint) == 64
    # Checking mutates nothing.
    assert repo.head() == head and repo.files_at(head) == INITIAL

    # Without a/ b/ prefixes (plain `diff -u`) it is the same change.
    plain = (
        make_diff(TRAIN_PY, new)
        .replace("--- a/train.py", "--- train.py")
        .replace("+++ b/train.py", "+++ train.py")
    )
    assert repo.check_patch(head, plain).normalized == check.normalized

    # A profile change is a change too.
    profiles = dict(PROFILES, cpu={"DEPTH": 3, "DEVICE_BATCH_SIZE": 4})
    new_json = json.dumps(profiles, indent=2) + "\n"
    profile_check = repo.check_patch(head, make_diff(PROFILES_JSON, new_json, "profiles.json"))
    assert profile_check.changed_paths == ("profiles.json",)
    with pytest.raises(PatchError, match="may not"):
        repo.check_patch(
            head, make_diff(PROFILES_JSON, new_json, "profiles.json"), allowed_paths=("train.py",)
        )


def binary_patches(tmp_path: Path) -> list[str]:
    """The same binary change as git writes it with and without --binary."""
    work = tmp_path / "binary-work"
    work.mkdir()
    git("init", "-q", cwd=work)
    (work / "train.py").write_text(TRAIN_PY)
    git("add", "train.py", cwd=work)
    git("commit", "-q", "-m", "base", cwd=work)
    (work / "train.py").write_bytes(b"\x00\x01\x02binary\xff\x00")
    return [git_raw("diff", "--binary", cwd=work), git_raw("diff", cwd=work)]


REFUSALS = {
    "empty": ("", "empty"),
    "blank": ("\n\n  \n", "empty"),
    "not a diff": ("please make the model deeper\n", "not a unified diff"),
    "does not apply": (
        make_diff(TRAIN_PY.replace("0.04", "0.07"), TRAIN_PY.replace("0.04", "0.05")),
        "does not apply cleanly",
    ),
    "other path": (
        "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-old\n+new\n",
        "may not: README.md",
    ),
    "new file": ("--- /dev/null\n+++ b/train.py.bak\n@@ -0,0 +1 @@\n+x = 1\n", "creates train.py.bak"),
    "delete": (
        "diff --git a/profiles.json b/profiles.json\ndeleted file mode 100644\n--- a/profiles.json\n+++ /dev/null\n"
        + "@@ -1 +0,0 @@\n-{}\n",
        "deletes profiles.json",
    ),
    "rename": (
        "diff --git a/train.py b/model.py\nsimilarity index 100%\nrename from train.py\nrename to model.py\n",
        "renames train.py => model.py",
    ),
    "mode change": (
        "diff --git a/train.py b/train.py\nold mode 100644\nnew mode 100755\n",
        "changes the mode of train.py",
    ),
    "syntax error": (
        make_diff(TRAIN_PY, TRAIN_PY.replace("def main():", "def main(:")),
        "does not parse as Python",
    ),
    "invalid json": (
        make_diff(PROFILES_JSON, PROFILES_JSON.replace('"cpu":', "cpu:"), "profiles.json"),
        "not valid JSON",
    ),
    "nan in json": (
        make_diff(PROFILES_JSON, PROFILES_JSON.replace('"DEPTH": 2', '"DEPTH": NaN'), "profiles.json"),
        "not valid JSON",
    ),
    "comments only": (
        make_diff(TRAIN_PY, TRAIN_PY.replace("# transformer layers", "# layers of the transformer")),
        "only comments or formatting",
    ),
    "too large": ("--- a/train.py\n+++ b/train.py\n" + "+x\n" * 100_000, "over the"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_check_patch_refuses(repo: GlobalBranch, case: str):
    patch, reason = REFUSALS[case]
    head = repo.head()
    with pytest.raises(PatchError, match=reason) as caught:
        repo.check_patch(head, patch)
    assert caught.value.reason
    assert repo.head() == head and repo.files_at(head) == INITIAL


def test_check_patch_refuses_new_file_even_where_the_path_is_allowed(repo: GlobalBranch):
    with pytest.raises(PatchError, match="creates extra.py"):
        repo.check_patch(
            repo.head(), "--- /dev/null\n+++ b/extra.py\n@@ -0,0 +1 @@\n+x = 1\n", ("train.py", "extra.py")
        )


def test_check_patch_refuses_binary(repo: GlobalBranch, tmp_path: Path):
    full, summary = binary_patches(tmp_path)
    assert "GIT binary patch" in full and "Binary files" in summary
    for patch in (full, summary):
        with pytest.raises(PatchError, match="binary"):
            repo.check_patch(repo.head(), patch)
    # Git's own reading of the patch says binary as well.
    assert repo._git(["apply", "--numstat", "-"], stdin=full.encode()).stdout.startswith(b"-\t-\t")


def test_check_patch_refuses_unknown_or_foreign_base(repo: GlobalBranch):
    patch = make_diff(TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"))
    with pytest.raises(UnknownCommitError):
        repo.check_patch("1" * 40, patch)
    # A commit object in the repository that is not on the branch.
    tree = git("rev-parse", "global^{tree}", git_dir=repo.repo_dir)
    stray = git("commit-tree", tree, "-m", "stray", git_dir=repo.repo_dir)
    with pytest.raises(UnknownCommitError, match="not on branch"):
        repo.check_patch(stray, patch)


def test_same_change_with_different_context_normalizes_the_same(repo: GlobalBranch):
    head = repo.head()
    new = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05").replace("return 1.0\n", "return 0.9\n")
    checks = [repo.check_patch(head, make_diff(TRAIN_PY, new, context=n)) for n in (1, 3, 8)]
    assert len({check.normalized for check in checks}) == 1
    assert len({check.fingerprint for check in checks}) == 1
    assert len({check.patch for check in checks}) == 1  # git's regeneration is canonical too

    # Spelling and comments do not make a different change: 5e-2 is 0.05.
    respelled = TRAIN_PY.replace("MATRIX_LR = 0.04  # Muon", "MATRIX_LR = 5e-2  # the Muon").replace(
        "return 1.0\n", "return 0.9  # a bit lower\n"
    )
    assert repo.check_patch(head, make_diff(TRAIN_PY, respelled)).normalized == checks[0].normalized
    # A different value is a different change.
    other = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06").replace("return 1.0\n", "return 0.9\n")
    assert repo.check_patch(head, make_diff(TRAIN_PY, other)).normalized != checks[0].normalized
    # Key order and spacing of the profiles are not a change; a value is.
    reordered = json.dumps(dict(reversed(list(PROFILES.items()))), indent=4) + "\n"
    with pytest.raises(PatchError, match="only comments or formatting"):
        repo.check_patch(head, make_diff(PROFILES_JSON, reordered, "profiles.json"))


def test_constant_change_diff_round_trip(repo: GlobalBranch):
    head = repo.head()
    new = TRAIN_PY.replace("DEPTH = 8", "DEPTH = 10").replace(
        'WINDOW_PATTERN = "SSSL"', 'WINDOW_PATTERN = "L"'
    )
    patch = repo.diff_files(head, {"train.py": new, "profiles.json": PROFILES_JSON})
    assert patch.startswith("diff --git a/train.py b/train.py\n") and "profiles.json" not in patch
    check = repo.check_patch(head, patch)
    assert check.files == {"train.py": new}
    assert check.patch == patch
    assert repo.diff_files(head, {"train.py": TRAIN_PY}) == ""
    with pytest.raises(UnknownPathError):
        repo.diff_files(head, {"model.py": "x = 1\n"})


# ---------------------------------------------------------------------------------------------
# Landing wins
# ---------------------------------------------------------------------------------------------


def test_commit_on_head_with_trailers_read_back_from_log(repo: GlobalBranch):
    base = repo.head()
    new = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
    body = "cpu: -0.0042 bpb (-0.41%, 3.4 sigma), 4 runs by 2 owners\nh100-80g: -0.0011 bpb (2.9 sigma)"
    commit = repo.commit_win(
        base,
        make_diff(TRAIN_PY, new),
        title="Raise MATRIX_LR to 0.05",
        body=body,
        author_name="alice",
        author_email="alice@example.org",
        trailers={
            "Hypothesis-Id": "h-17",
            "Result-Id": ["r-1", "r-2", "r-3"],
            trailer_token("Delta-Bpb-h100_80g"): "-0.0011",
        },
    )
    assert repo.head() == commit
    assert repo.read_file(commit, "train.py") == new
    info = repo.log()[0]
    assert info.sha == commit and info.parents == (base,)
    assert (info.author, info.author_email) == ("alice", "alice@example.org")
    assert info.title == "Raise MATRIX_LR to 0.05"
    assert info.body == body
    assert info.trailers == {
        "Hypothesis-Id": ("h-17",),
        "Result-Id": ("r-1", "r-2", "r-3"),
        "Delta-Bpb-h100-80g": ("-0.0011",),
    }
    assert info.trailer("hypothesis-id") == "h-17"
    # git itself parses the trailers the same way.
    assert git(
        "log", "-1", "--format=%(trailers:key=Result-Id,valueonly)", "global", git_dir=repo.repo_dir
    ).split() == [
        "r-1",
        "r-2",
        "r-3",
    ]
    assert git("log", "-1", "--format=%cn", "global", git_dir=repo.repo_dir) == "autoswarm"
    assert [c.sha for c in repo.log(limit=1)] == [commit]
    assert len(repo.log()) == 2


def test_win_on_older_base_merges_onto_changed_head(repo: GlobalBranch):
    base = repo.head()
    first = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
    head = land(repo, base, TRAIN_PY, first, "Raise MATRIX_LR")

    # Measured on the old base, changes code far below the constants.
    second = TRAIN_PY.replace("4.0 * math.exp(-0.01 * step)", "4.0 * math.exp(-0.02 * step)")
    patch = make_diff(TRAIN_PY, second)
    outcome = repo.rebase_patch(base, patch)
    both = first.replace("4.0 * math.exp(-0.01 * step)", "4.0 * math.exp(-0.02 * step)")
    assert outcome.rebased and outcome.head == head and outcome.base_commit == base
    assert outcome.files == {"train.py": both}
    assert outcome.tree_files == {"train.py": both, "profiles.json": PROFILES_JSON}
    # The new patch is against the head and carries only the second change.
    assert "-    return 4.0 * math.exp(-0.01 * step) + 1.0" in outcome.patch
    assert "MATRIX_LR" not in outcome.patch.split("@@", 2)[2]
    assert repo.check_patch(head, outcome.patch).files == {"train.py": both}
    assert repo.head() == head  # rebasing lands nothing

    # Landing it (after re-verification on `head`) merges the same way.
    merged = repo.commit_win(
        base,
        patch,
        title="Faster decay",
        body="cpu: re-verified on the head",
        author_name="bob",
        author_email="bob@example.org",
        trailers=win_trailers("h-2", "r-9"),
        expected_head=head,
    )
    assert repo.log()[0].parents == (head,)
    assert repo.read_file(merged, "train.py") == both

    # On the head the outcome is the patch itself, regenerated by git.
    third = both.replace("DEPTH = 8", "DEPTH = 9")
    same = repo.rebase_patch(merged, make_diff(both, third))
    assert not same.rebased and same.head == merged and same.files == {"train.py": third}


def test_conflicting_win_is_refused_and_names_train_py(repo: GlobalBranch):
    base = repo.head()
    head = land(repo, base, TRAIN_PY, TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"), "Up")
    rival = make_diff(TRAIN_PY, TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.03"))
    with pytest.raises(MergeConflictError) as caught:
        repo.rebase_patch(base, rival)
    assert caught.value.conflicted_paths == ("train.py",)
    assert "CONFLICT" in caught.value.reason
    with pytest.raises(MergeConflictError):
        repo.commit_win(
            base,
            rival,
            title="Down",
            body="",
            author_name="carol",
            author_email="carol@example.org",
            trailers=win_trailers("h-3", "r-4"),
        )
    assert repo.head() == head


def test_clean_textual_merge_that_breaks_python_is_a_conflict(tmp_path: Path):
    # Each side keeps a statement in f(); together they leave only comments: no body at all.
    source = "def f():\n    a = 1\n    # one\n    # two\n    # three\n    # four\n    return 2\n\n\nf()\n"
    repo = GlobalBranch.open(tmp_path / "g.git", initial_files={"train.py": source, "profiles.json": "{}\n"})
    base = repo.head()
    head = land(repo, base, source, source.replace("    a = 1\n", ""), "Drop a")
    with pytest.raises(MergeConflictError, match="does not parse as Python") as caught:
        repo.rebase_patch(base, make_diff(source, source.replace("    return 2\n", "")))
    assert caught.value.conflicted_paths == ("train.py",)
    assert repo.head() == head


def test_change_already_on_the_head_is_not_landed_twice(repo: GlobalBranch):
    base = repo.head()
    new = TRAIN_PY.replace("DEPTH = 8", "DEPTH = 6")
    head = land(repo, base, TRAIN_PY, new, "Shallower")
    with pytest.raises(AlreadyAppliedError):
        repo.rebase_patch(base, make_diff(TRAIN_PY, new))
    with pytest.raises(AlreadyAppliedError):
        land(repo, base, TRAIN_PY, new, "Shallower again")
    assert repo.head() == head


def test_commit_win_refuses_bad_identity_and_trailers_without_moving(repo: GlobalBranch):
    head = repo.head()
    patch = make_diff(TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"))
    common = dict(title="t", body="b", trailers={"Hypothesis-Id": "h"})
    with pytest.raises(MessageError):
        repo.commit_win(head, patch, author_name="eve <x@y>", author_email="e@x", **common)
    with pytest.raises(MessageError):
        repo.commit_win(
            head, patch, author_name="eve", author_email="e@x", title="t", body="", trailers={"Bad Key": "v"}
        )
    with pytest.raises(PatchError):
        repo.commit_win(head, "garbage\n", author_name="eve", author_email="e@x", **common)
    assert repo.head() == head


def test_message_format_tidies_free_text():
    message = format_message(
        "  A title\nwith a break ", "line one  \r\nline two\n\n", {"Result-Id": ["a", "b"]}
    )
    assert message == "A title with a break\n\nline one\nline two\n\nResult-Id: a\nResult-Id: b\n"
    assert trailer_token("Delta-Bpb-rtx 4090_24g") == "Delta-Bpb-rtx-4090-24g"


# ---------------------------------------------------------------------------------------------
# Reverts and the ref compare-and-swap
# ---------------------------------------------------------------------------------------------


def test_revert_restores_content_and_says_why(repo: GlobalBranch):
    base = repo.head()
    first = TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
    bad = land(repo, base, TRAIN_PY, first, "Raise MATRIX_LR")
    later = first.replace('print("---")', "print('---')  # summary marker").replace(
        "range(100)", "range(120)"
    )
    kept = land(repo, bad, first, later, "Longer loop")

    reverted = repo.revert(
        bad, "rtx3090-24g got worse: +0.0120 bpb (4.1 sigma)", {"Flagged-Class": "rtx3090-24g"}
    )
    assert repo.head() == reverted
    content = repo.read_file(reverted, "train.py")
    assert "MATRIX_LR = 0.04" in content and "range(120)" in content  # later change kept
    info = repo.log()[0]
    assert info.parents == (kept,)
    assert info.title == 'Revert "Raise MATRIX_LR"'
    assert f"This reverts commit {bad}." in info.body
    assert "rtx3090-24g got worse" in info.body
    assert info.trailers == {"Reverts": (bad,), "Flagged-Class": ("rtx3090-24g",)}
    assert info.author == "autoswarm"
    with pytest.raises(AlreadyAppliedError):
        repo.revert(bad, "again", {})
    with pytest.raises(BranchError, match="parents"):
        repo.revert(repo.log()[-1].sha, "the root", {})


def test_ref_compare_and_swap_catches_a_moved_head(repo: GlobalBranch, monkeypatch: pytest.MonkeyPatch):
    base = repo.head()
    elsewhere = git(
        "commit-tree", f"{base}^{{tree}}", "-p", base, "-m", "someone else", git_dir=repo.repo_dir
    )
    real_commit_tree = GlobalBranch._commit_tree

    def commit_then_move_head(self: GlobalBranch, tree, parents, message, env):
        sha = real_commit_tree(self, tree, parents, message, env)
        if parents == [base]:  # the win itself, after the head was read
            git("update-ref", "refs/heads/global", elsewhere, git_dir=self.repo_dir)
        return sha

    monkeypatch.setattr(GlobalBranch, "_commit_tree", commit_then_move_head)
    with pytest.raises(RefMovedError) as caught:
        land(repo, base, TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"), "Deeper")
    assert (caught.value.expected, caught.value.actual) == (base, elsewhere)
    assert repo.head() == elsewhere  # the concurrent move won and nothing was overwritten

    monkeypatch.setattr(GlobalBranch, "_commit_tree", real_commit_tree)
    with pytest.raises(RefMovedError):
        repo.commit_win(
            base,
            make_diff(TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9")),
            title="Deeper",
            body="",
            author_name="alice",
            author_email="alice@example.org",
            trailers={},
            expected_head=base,  # re-verified on base, but the head is elsewhere now
        )
    assert repo.head() == elsewhere


def test_concurrent_wins_from_threads_both_land(repo: GlobalBranch):
    base = repo.head()
    changes = [
        TRAIN_PY.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"),
        TRAIN_PY.replace("range(100)", "range(150)"),
        TRAIN_PY.replace("return 1.0\n", "return 0.95\n"),
    ]
    errors: list[BaseException] = []

    def submit(index: int) -> None:
        try:
            land(repo, base, TRAIN_PY, changes[index], f"change {index}")
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(changes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = repo.read_file(repo.head(), "train.py")
    assert "MATRIX_LR = 0.05" in final and "range(150)" in final and "return 0.95" in final
    assert len(repo.log()) == 4


# ---------------------------------------------------------------------------------------------
# Backup, restore, mirror
# ---------------------------------------------------------------------------------------------


def test_bundle_and_restore(repo: GlobalBranch, tmp_path: Path):
    land(repo, repo.head(), TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"), "Deeper")
    bundle = tmp_path / "backups" / "global.bundle"
    repo.bundle(bundle)
    assert bundle.is_file()

    restored = GlobalBranch.restore(bundle, tmp_path / "restored.git")
    assert restored.head() == repo.head()
    assert restored.files_at(restored.head()) == repo.files_at(repo.head())
    assert restored.log() == repo.log()
    with pytest.raises(BranchError, match="not empty"):
        GlobalBranch.restore(bundle, repo.repo_dir)
    with pytest.raises(BranchError, match="no bundle"):
        GlobalBranch.restore(tmp_path / "missing.bundle", tmp_path / "other.git")
    not_a_bundle = tmp_path / "junk.bundle"
    not_a_bundle.write_text("hello\n")
    with pytest.raises(BranchError, match="not a readable git bundle"):
        GlobalBranch.restore(not_a_bundle, tmp_path / "third.git")
    assert not (tmp_path / "third.git").exists()


def test_push_mirror_to_a_local_bare_repository(repo: GlobalBranch, tmp_path: Path):
    mirror = tmp_path / "mirror.git"
    git("init", "-q", "--bare", str(mirror))
    repo.push_mirror(str(mirror))
    assert git("rev-parse", "refs/heads/global", git_dir=mirror) == repo.head()

    land(repo, repo.head(), TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"), "Deeper")
    repo.push_mirror(str(mirror))
    assert git("rev-parse", "refs/heads/global", git_dir=mirror) == repo.head()

    # Someone else wrote to the mirror: the push is refused, never forced.
    tree = git("rev-parse", "global^{tree}", git_dir=mirror)
    foreign = git("commit-tree", tree, "-m", "foreign", git_dir=mirror)
    git("update-ref", "refs/heads/global", foreign, git_dir=mirror)
    land(
        repo,
        repo.head(),
        TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"),
        TRAIN_PY.replace("DEPTH = 8", "DEPTH = 10"),
        "More",
    )
    with pytest.raises(BranchError, match="mirror push"):
        repo.push_mirror(str(mirror))
    assert git("rev-parse", "refs/heads/global", git_dir=mirror) == foreign
    with pytest.raises(BranchError):
        repo.push_mirror("--upload-pack=touch /tmp/x")


# ---------------------------------------------------------------------------------------------
# Isolation from the user's git setup
# ---------------------------------------------------------------------------------------------


def test_user_git_config_and_location_variables_do_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hostile = tmp_path / "hostile.gitconfig"
    hostile.write_text(
        "[diff]\n\tnoprefix = true\n[user]\n\tname = Wrong Person\n[core]\n\thooksPath = /nonexistent\n"
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(hostile))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere" / "index"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Wrong Person")
    for name in ("HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(tmp_path))
    repo = GlobalBranch.open(tmp_path / "g.git", initial_files=INITIAL)
    patch = repo.diff_files(repo.head(), {"train.py": TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9")})
    assert "--- a/train.py" in patch
    land(repo, repo.head(), TRAIN_PY, TRAIN_PY.replace("DEPTH = 8", "DEPTH = 9"), "Deeper")
    assert [c.author for c in repo.log()] == ["alice", "autoswarm"]
    assert not (tmp_path / "elsewhere").exists()


def test_module_does_not_import_torch():
    source = Path(branch_module.__file__).read_text()
    assert "import torch" not in source
