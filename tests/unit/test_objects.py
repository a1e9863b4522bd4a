"""Reading the source clone's objects through one `git cat-file --batch` process:
what an export writes matches what git itself checks out, crafted trees are refused,
and a cat-file process that went away (killed with a pid namespace) is started again."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from hs_txupdate.sync.git import (
    BadTreeEntry,
    SourceError,
    SourceState,
    check_tree,
    commit_age_days,
    export_tree,
    fetched_state,
    is_ancestor,
    open_existing,
    read_blob,
    subdirs,
)
from hs_txupdate.sync.objects import ObjectReader, parse_tree
from tests.helpers import GitSource


def _source(tmp_path: Path) -> tuple[GitSource, SourceState]:
    source = GitSource(tmp_path / "src").create()
    work = source.work
    (work / "modules/a/sub").mkdir(parents=True)
    (work / "modules/a/index.json").write_text('{"name": "a"}')
    (work / "modules/a/sub/run.sh").write_text("#!/bin/sh\n")
    (work / "modules/a/sub/run.sh").chmod(0o755)
    (work / "modules/a/link").symlink_to("sub/run.sh")
    (work / "modules/a/blank name é").write_bytes(b"\0binary\xff")
    (work / "modules/b").mkdir()
    (work / "modules/b/index.json").write_text("{}")
    commit = source.publish({})
    state = SourceState(commit, ObjectReader(source.bare))
    return source, state


def test_reads_and_exports_what_git_checks_out(tmp_path: Path) -> None:
    source, state = _source(tmp_path)
    with state.objects:
        assert read_blob(state, "modules/a/index.json") == b'{"name": "a"}'
        assert read_blob(state, "modules/a/blank name é") == b"\0binary\xff"
        assert read_blob(state, "modules/a/missing") is None
        assert read_blob(state, "modules/a/index.json/deeper") is None
        assert read_blob(state, "modules/a") is None  # a directory is no file
        assert subdirs(state, "modules") == ["a", "b"]
        assert subdirs(state, "modules/a/index.json") is None
        export_tree(state, "modules/a", tmp_path / "out")
    out = tmp_path / "out"
    assert os.readlink(out / "link") == "sub/run.sh"
    assert (out / "sub/run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "index.json").stat().st_mode & 0o777 == 0o644
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    expected = source.git("ls-tree", "-r", "-t", "--name-only", "-z", "HEAD:modules/a")
    assert listing == sorted(expected.strip("\0").split("\0"))


def test_commit_age_and_ancestry_are_git_s(tmp_path: Path) -> None:
    source, state = _source(tmp_path)
    first = source.git("rev-list", "--max-parents=0", "HEAD")
    newer = source.publish({"c": {"index.json": "{}"}})
    state = SourceState(newer, state.objects)
    with state.objects:
        committed = int(source.git("log", "-1", "--format=%ct", newer))
        assert state.objects.committed_at(newer) == committed
        assert 0 <= commit_age_days(state) < 1
        assert is_ancestor(state, first)
        assert not is_ancestor(SourceState(first, state.objects), newer)
        assert not is_ancestor(state, "0" * 40)


def test_a_cat_file_process_that_went_away_is_started_again(tmp_path: Path) -> None:
    _, state = _source(tmp_path)
    with state.objects:
        assert read_blob(state, "modules/b/index.json") == b"{}"
        proc = state.objects._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert read_blob(state, "modules/b/index.json") == b"{}"
        assert state.objects._proc is not proc
    assert state.objects._proc is None, "close ends it"


def test_names_that_are_no_object_or_ref_are_refused(tmp_path: Path) -> None:
    _, state = _source(tmp_path)
    with state.objects, pytest.raises(ValueError, match="not an object id"):
        state.objects.read("HEAD\nrefs/heads/master")
    with state.objects:
        assert state.objects.resolve("refs/heads/none") is None
        assert state.objects.read("f" * 40) is None


def _crafted(source: GitSource, tree: bytes) -> SourceState:
    """A commit whose tree holds `tree` (raw tree object bytes) as `modules/x`."""
    argv = ["git", "-C", str(source.work), "hash-object", "-w", "-t", "tree", "--literally"]
    proc = subprocess.run([*argv, "--stdin"], input=tree, capture_output=True, check=True)
    x = proc.stdout.decode().strip()
    modules = source.git("mktree", stdin=f"040000 tree {x}\tx\n")
    root = source.git("mktree", stdin=f"040000 tree {modules}\tmodules\n")
    commit = source.git("commit-tree", root, "-m", "crafted")
    return SourceState(commit, ObjectReader(source.work / ".git"))


def test_crafted_trees_are_refused(tmp_path: Path) -> None:
    source, _ = _source(tmp_path)
    blob = bytes.fromhex(source.git("hash-object", "-w", "--stdin", stdin="x"))
    slash = _crafted(source, b"100644 a/b\0" + blob)
    with slash.objects, pytest.raises(BadTreeEntry, match="a/b"):
        check_tree(slash, "modules")
    truncated = _crafted(source, b"100644 f\0" + blob[:7])
    with truncated.objects, pytest.raises(BadTreeEntry, match="crafted"):
        read_blob(truncated, "modules/x/f")
    module = _crafted(source, b"160000 sub\0" + blob)
    with module.objects, pytest.raises(SourceError, match="submodule"):
        check_tree(module, "modules")


def test_parse_tree_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_tree(b"100644 no-nul-here", 20)
    with pytest.raises(ValueError):
        parse_tree(b"10x644 f\0" + bytes(20), 20)
    assert parse_tree(b"", 20) == []


def test_fetched_state_needs_the_same_url(tmp_path: Path) -> None:
    source, _ = _source(tmp_path)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--bare", source.url, str(clone)], check=True)
    refspec = "+master:refs/remotes/origin/master"
    subprocess.run(["git", "--git-dir", str(clone), "fetch", "-q", "origin", refspec], check=True)
    objects = open_existing(clone)
    assert objects is not None and open_existing(tmp_path / "none") is None
    with objects:
        state = fetched_state(objects, source.url, "master")
        assert state is not None and state.commit == source.git("rev-parse", "HEAD")
        assert fetched_state(objects, source.url + "/other", "master") is None
        assert fetched_state(objects, source.url, "no-such-branch") is None


def test_the_trees_on_the_way_to_a_path_are_read_once(tmp_path: Path) -> None:
    """Objects never change: a reader keeps the trees it looked paths up in, and the
    commit's root, so the next module's index.json costs its own tree and blob."""
    _, state = _source(tmp_path)
    reads: list[str] = []
    read = state.objects.read
    state.objects.read = lambda name: reads.append(name) or read(name)  # type: ignore[method-assign]
    with state.objects:
        assert read_blob(state, "modules/a/index.json") == b'{"name": "a"}'
        first = len(reads)
        assert read_blob(state, "modules/b/index.json") == b"{}"
        state.objects.entries(state.objects.commit_tree(state.commit)).clear()  # the caller's
        assert subdirs(state, "modules") == ["a", "b"]
    assert first == 5, "the commit, the root, modules, a, the blob"
    assert len(reads) == first + 2, "b's tree and its blob"
