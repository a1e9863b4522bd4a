"""The git source: one bare clone in `state_dir/source`, fetched into on every run.

Reading happens from commit objects (no work tree), so nothing on disk but the
clone's objects and refs changes before the transaction snapshots its scope.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import git

from ..base.errors import HsTxError, UsageError
from ..base.fsio import fsync_dir, write_new
from ..base.proc import GIT_ENV_VARS, run

# Every network operation ends after this long; git itself aborts a stalled transfer sooner.
FETCH_TIMEOUT_S = 300
# No prompt may ever wait for a person: hs-tx runs from a timer over SSH.
_QUIET_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=30",
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "60",
}
REMOTE_REF = "refs/remotes/origin/{branch}"


class SourceError(HsTxError):
    """The source repository cannot be reached or is not usable; nothing was changed."""


@dataclass(frozen=True)
class SourceState:
    """The fetched source: its commit and a handle to read files from it."""

    commit: str
    repo: git.Repo

    def tree(self) -> git.Tree:
        """The commit's root tree."""
        return self.repo.commit(self.commit).tree


def _scrub_environment() -> None:
    """GitPython passes os.environ on to git: drop what would redirect it."""
    for name in GIT_ENV_VARS:
        os.environ.pop(name, None)


def open_clone(clone_dir: Path, url: str) -> git.Repo:
    """Open (creating it bare, 0700, if missing) the one clone; point origin at `url`."""
    _scrub_environment()
    if not (clone_dir / "HEAD").exists():
        clone_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        repo = git.Repo.init(clone_dir, bare=True)
        fsync_dir(clone_dir.parent)
    else:
        repo = git.Repo(clone_dir)
    if "origin" not in [r.name for r in repo.remotes]:
        repo.create_remote("origin", url)
    elif repo.remotes.origin.url != url:
        repo.remotes.origin.set_url(url)
    return repo


def open_existing(clone_dir: Path) -> git.Repo | None:
    """Open the clone read-only as it is; None when there is none (never creates one).

    For read-only views such as `hs-tx modules list`: nothing is fetched or written.
    """
    _scrub_environment()
    if not (clone_dir / "HEAD").is_file():
        return None
    try:
        return git.Repo(clone_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def fetched_state(repo: git.Repo, url: str, branch: str) -> SourceState | None:
    """What the last fetch of `branch` from `url` left in the clone, or None.

    None when origin points elsewhere (the clone then holds another source's
    commits, which would mislead) or `branch` was never fetched.
    """
    origin = next((r for r in repo.remotes if r.name == "origin"), None)
    if origin is None or origin.url != url:
        return None
    try:
        commit = repo.rev_parse(REMOTE_REF.format(branch=branch)).hexsha
    except (git.BadName, ValueError):
        return None
    return SourceState(commit, repo)


def fetch(clone_dir: Path, url: str, branch: str) -> SourceState:
    """Fetch `branch` of `url` into the clone and return the fetched commit.

    Raises SourceError when the source cannot be reached or has no such branch.
    """
    repo = open_clone(clone_dir, url)
    ref = REMOTE_REF.format(branch=branch)
    try:
        repo.git.fetch(
            "--no-tags",
            "--prune",
            "origin",
            f"+refs/heads/{branch}:{ref}",
            kill_after_timeout=FETCH_TIMEOUT_S,
            env=_QUIET_ENV,
        )
    except git.GitCommandError as exc:
        detail = (exc.stderr or "").strip().replace("\n", " ").removeprefix("stderr: ")
        raise SourceError(
            f"cannot fetch branch {branch!r} from {url}: {detail or exc}",
            "check [source] url and branch and that the source is reachable; nothing was changed",
        ) from exc
    return SourceState(repo.rev_parse(ref).hexsha, repo)


class SignatureError(UsageError):
    """The source commit is not signed by a key the operator allows."""


@dataclass(frozen=True)
class Signature:
    """Who signed the source commit: the principal of allowed_signers and the key."""

    signer: str
    key: str


_GOOD = re.compile(r'Good "git" signature for (\S+) with (\S+) key (\S+)')


def verify_signature(state: SourceState, allowed_signers: Path) -> Signature:
    """Check that the fetched commit carries a valid SSH signature by a key of git's
    allowed-signers file `allowed_signers` (valid at the commit's time).

    Raises SignatureError (exit 2) naming the commit, its signer if any, and why.
    """
    if not allowed_signers.is_file():
        raise SignatureError(
            f"[source] allowed_signers {allowed_signers} does not exist",
            'point it at git\'s SSH allowed-signers file, or set it to "" to turn the check off',
        )
    config = ["-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}"]
    argv = ["git", "--git-dir", str(state.repo.git_dir), *config, "verify-commit", state.commit]
    result = run(argv, check=False, timeout=60)
    said = (result.stderr + result.stdout).strip()
    good = _GOOD.search(said)
    if result.returncode == 0 and good:
        return Signature(good.group(1), f"{good.group(2)} {good.group(3)}")
    signer = re.search(r"signature for (\S+)|key (SHA256:\S+)", said)
    who = f" (signed by {signer.group(1) or signer.group(2)})" if signer else ""
    why = said.splitlines()[-1] if said else "it carries no signature"
    raise SignatureError(
        f"source commit {state.commit[:12]} is not signed by an allowed key{who}: {why}",
        "sign it with a key listed in [source] allowed_signers; nothing was changed",
    )


def commit_age_days(state: SourceState) -> float:
    """How many days ago the fetched commit was made (by its committer date)."""
    committed = state.repo.commit(state.commit).committed_date
    return (time.time() - committed) / 86400


def is_ancestor(state: SourceState, older: str) -> bool:
    """True when commit `older` is in the fetched commit's history (no rewrite)."""
    try:
        state.repo.git.merge_base("--is-ancestor", older, state.commit)
    except git.GitCommandError:
        return False
    return True


def read_blob(state: SourceState, path: str) -> bytes | None:
    """The bytes of file `path` in the fetched commit, or None when it is absent."""
    try:
        item = state.tree() / path
    except KeyError:
        return None
    return item.data_stream.read() if item.type == "blob" else None


def subdirs(state: SourceState, path: str) -> list[str] | None:
    """Names of the directories directly under `path`, or None if `path` is no dir."""
    try:
        tree = state.tree() / path
    except KeyError:
        return None
    if tree.type != "tree":
        return None
    return sorted(t.name for t in tree.trees)


def export_tree(state: SourceState, path: str, dest: Path) -> None:
    """Write the directory `path` of the fetched commit to the new dir `dest`, durably.

    Files get mode 0644 or 0755 as git records them; symlinks stay symlinks.
    Raises SourceError for a submodule, which cannot be exported.
    """
    tree = state.tree() / path if path else state.tree()
    _mkdir(dest)
    dirs = [dest]
    for item in tree.traverse():
        assert isinstance(item, git.Tree | git.Blob | git.Submodule)  # not a (parent, child) pair
        target = dest / (os.path.relpath(item.path, path) if path else item.path)
        if item.type == "tree":
            _mkdir(target)
            dirs.append(target)
        elif item.type == "blob":
            _write_blob(item, target)
        else:
            raise SourceError(
                f"{item.path} in the source is a submodule, which hs-tx cannot install",
                "vendor its files into the source repository instead",
            )
    for directory in reversed(dirs):
        fsync_dir(directory)


def _mkdir(path: Path) -> None:
    os.mkdir(path)
    os.chmod(path, 0o755)  # whatever hs-tx's own umask is


def _write_blob(blob: git.Blob, target: Path) -> None:
    data = blob.data_stream.read()
    if stat.S_ISLNK(blob.mode):
        os.symlink(os.fsdecode(data), target)
        return
    write_new(target, data, 0o755 if blob.mode & 0o111 else 0o644)
