"""The git source: one bare clone in `state_dir/source`, fetched into on every run.

Reading happens from commit objects (no work tree, see objects.py), so nothing on
disk but the clone's objects and refs changes before the transaction snapshots its
scope.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import HsTxError, UsageError
from ..base.fsio import fsync_dir, write_new
from ..base.proc import CommandError, run, run_watched
from .objects import Entry, ObjectReader

_CLONE_CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tbare = true\n"
# No prompt may ever wait for a person: hs-tx runs from a timer over SSH.
QUIET_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=30",
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "60",
}
REMOTE_REF = "refs/remotes/origin/{branch}"
INCOMING_REF = "refs/hs-tx/incoming"  # where a fetch lands until its limits are checked
MAX_PACKS = 50  # each fetch adds a pack; beyond this many, they are repacked into one
_MAX_REFS_ANSWER = 1 << 20  # what `ls-remote` of one branch may print


class SourceError(HsTxError):
    """The source repository cannot be reached or is not usable; nothing was changed."""


@dataclass(frozen=True)
class SourceState:
    """The fetched source: its commit and the reader of the clone's objects."""

    commit: str
    objects: ObjectReader

    @property
    def git_dir(self) -> Path:
        return self.objects.git_dir


def open_clone(clone_dir: Path, url: str) -> ObjectReader:
    """Open (creating it bare, 0700, if missing) the one clone, its local settings
    reset to hs-tx's own (see `_reset_local_settings`) with origin at `url`."""
    if not (clone_dir / "HEAD").exists():
        clone_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["git", "init", "--bare", "--quiet", str(clone_dir)])
        fsync_dir(clone_dir.parent)
    _reset_local_settings(clone_dir, url)
    return ObjectReader(clone_dir)


def _reset_local_settings(clone_dir: Path, url: str) -> None:
    """Make the clone's config exactly hs-tx's (bare, origin = `url`) and drop its hooks
    and alternates: whatever was put there is never honoured by a fetch or a read.
    Writes nothing when all of that is already so."""
    config = clone_dir / "config"
    wanted = _CLONE_CONFIG + b'[remote "origin"]\n\turl = ' + _quoted(url) + b"\n"
    current = None
    with contextlib.suppress(FileNotFoundError):
        current = None if config.is_symlink() else config.read_bytes()
    changed = current != wanted
    if changed:
        fresh = config.with_name("config.hs-tx-new")
        fresh.unlink(missing_ok=True)
        write_new(fresh, wanted, 0o600)
        os.replace(fresh, config)
    hooks = clone_dir / "hooks"
    if hooks.is_symlink() or hooks.is_file():
        hooks.unlink()
        changed = True
    elif hooks.is_dir():
        shutil.rmtree(hooks)
        changed = True
    alternates = clone_dir / "objects/info/alternates"
    if alternates.exists() or alternates.is_symlink():
        alternates.unlink()
        changed = True
    if changed:
        fsync_dir(clone_dir)


def _quoted(value: str) -> bytes:
    """`value` as a quoted git config value (what `git config` reads back as `value`)."""
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t")):
        value = value.replace(char, escaped)
    return b'"' + value.encode() + b'"'


def open_existing(clone_dir: Path) -> ObjectReader | None:
    """Open the clone read-only as it is; None when there is none (never creates one).

    For read-only views such as `hs-tx modules list`: nothing is fetched or written.
    """
    if not (clone_dir / "HEAD").is_file():
        return None
    return ObjectReader(clone_dir)


def fetched_state(objects: ObjectReader, url: str, branch: str) -> SourceState | None:
    """What the last fetch of `branch` from `url` left in the clone, or None.

    None when origin points elsewhere (the clone then holds another source's
    commits, which would mislead) or `branch` was never fetched. Raises CommandError
    when the clone cannot be read.
    """
    config = ["git", "config", "--file", str(objects.git_dir / "config")]
    origin = run([*config, "--get", "remote.origin.url"], check=False)
    if origin.returncode != 0 or origin.stdout.rstrip("\n") != url:
        return None
    commit = objects.resolve(REMOTE_REF.format(branch=branch))
    return SourceState(commit, objects) if commit is not None else None


def fetch(clone_dir: Path, url: str, branch: str, timeout_s: float, max_bytes: int) -> SourceState:
    """Fetch `branch` of `url` into the clone and return the fetched commit. No hook,
    submodule or local setting of the clone takes part (see open_clone).

    The fetch lands on a side ref and is kept as packs; it is stopped after
    `timeout_s` or once it brought more than `max_bytes`, and only a fetch within
    both moves the branch's ref. Raises SourceError when the source cannot be
    reached, has no such branch, or the fetch was stopped or too big (what it
    brought is deleted; no ref moved).
    """
    objects = open_clone(clone_dir, url)
    unchanged = _unchanged_tip(objects, url, branch, timeout_s)
    if unchanged is not None:
        return SourceState(unchanged, objects)
    packs = clone_dir / "objects" / "pack"
    before = _pack_sizes(packs)

    def too_big() -> str | None:
        brought = sum(size for name, size in _pack_sizes(packs).items() if name not in before)
        if brought > max_bytes:
            return f"it brought more than {max_bytes >> 20} MiB ([source] max_fetch_mb)"
        return None

    git_dir = ["git", "--git-dir", str(clone_dir)]
    # packs only (what a fetch brings is then one new file to watch), and no automatic
    # gc or maintenance, which would rewrite packs while they are counted
    settings = ["core.hooksPath=/dev/null", "fetch.unpackLimit=1", "gc.auto=0"]
    argv = [*git_dir, *(x for s in settings for x in ("-c", s)), "fetch", "--no-auto-maintenance"]
    argv += ["--no-tags", "--no-recurse-submodules", "--no-write-fetch-head"]
    argv += ["origin", f"+refs/heads/{branch}:{INCOMING_REF}"]
    try:
        run_watched(argv, timeout=timeout_s, watch=too_big, env=QUIET_ENV)
        if (why := too_big()) is not None:  # a fast fetch can end between two looks
            raise CommandError(f"git stopped: {why}", "")
        commit = objects.resolve(INCOMING_REF)
        if commit is None:
            raise CommandError(f"git fetch left no {INCOMING_REF}", "")
        run([*git_dir, "update-ref", REMOTE_REF.format(branch=branch), commit])
    except BaseException as exc:  # stopped, failed or interrupted: keep nothing it brought
        _drop_new_packs(packs, before)
        if not isinstance(exc, CommandError):
            raise
        raise _unreachable(url, branch, exc) from exc
    finally:
        run([*git_dir, "update-ref", "-d", INCOMING_REF], check=False)
    if len([n for n in _pack_sizes(packs) if n.endswith(".pack")]) > MAX_PACKS:
        run([*git_dir, "-c", "core.hooksPath=/dev/null", "repack", "-a", "-d", "-q"], timeout=None)
    return SourceState(commit, objects)


def _unchanged_tip(objects: ObjectReader, url: str, branch: str, timeout_s: float) -> str | None:
    """The commit the last fetch of `branch` left in the clone when the source's branch
    still points at it, else None. One `git ls-remote` (what a fetch that brings
    nothing costs about twice). Raises SourceError when the source cannot be asked."""
    local = objects.resolve(REMOTE_REF.format(branch=branch))
    if local is None:
        return None
    ref = f"refs/heads/{branch}".encode()
    answer = bytearray()

    def take(chunk: bytes) -> None:
        answer.extend(chunk)
        if len(answer) > _MAX_REFS_ANSWER:
            raise CommandError(f"it listed more than {_MAX_REFS_ANSWER >> 10} KiB of refs", "")

    argv = ["git", "--git-dir", str(objects.git_dir), "ls-remote", "origin", ref.decode()]
    try:
        run_watched(argv, timeout=timeout_s, env=QUIET_ENV, stdout_to=take)
    except CommandError as exc:
        raise _unreachable(url, branch, exc) from exc
    tips = {}
    for line in bytes(answer).splitlines():  # OID<TAB>NAME
        oid, _, name = line.partition(b"\t")
        tips[name] = oid
    return local if tips.get(ref) == local.encode() else None


def _unreachable(url: str, branch: str, why: CommandError) -> SourceError:
    """The error of a source that git could not fetch from or ask."""
    return SourceError(
        f"cannot fetch branch {branch!r} from {url}: {why}",
        "check [source] url and branch and that the source is reachable; nothing was changed",
    )


def _pack_sizes(packs: Path) -> dict[str, int]:
    """Size of every file in the clone's pack dir (temp packs being written included)."""
    sizes = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(packs):
            with contextlib.suppress(FileNotFoundError):  # git renames as it goes
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return sizes


def _drop_new_packs(packs: Path, before: dict[str, int]) -> None:
    """Delete the packs (whole or half-written) a refused fetch brought."""
    for name in _pack_sizes(packs).keys() - before.keys():
        (packs / name).unlink(missing_ok=True)


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
    argv = ["git", "--git-dir", str(state.git_dir), *config, "verify-commit", state.commit]
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
    return (time.time() - state.objects.committed_at(state.commit)) / 86400


def is_ancestor(state: SourceState, older: str) -> bool:
    """True when commit `older` is in the fetched commit's history (no rewrite)."""
    if older == state.commit:
        return True
    argv = ["git", "--git-dir", str(state.git_dir), "merge-base", "--is-ancestor"]
    return run([*argv, older, state.commit], check=False).returncode == 0


def read_blob(state: SourceState, path: str) -> bytes | None:
    """The bytes of file `path` in the fetched commit, or None when it is absent.

    Raises BadTreeEntry when a tree on the way cannot be read as one.
    """
    item = _item(state, path)
    if item is None or item.is_tree or item.is_submodule:
        return None
    found = state.objects.read(item.oid)
    return found.data if found is not None else None


def subdirs(state: SourceState, path: str) -> list[str] | None:
    """Names of the directories directly under `path`, or None if `path` is no dir.

    Raises BadTreeEntry as read_blob does.
    """
    tree = _item(state, path)
    if tree is None or not tree.is_tree:
        return None
    with _crafted_as_error(path):
        return sorted(e.name for e in state.objects.entries(tree.oid) if e.is_tree)


def export_tree(state: SourceState, path: str, dest: Path) -> None:
    """Write the directory `path` of the fetched commit to the new dir `dest`, durably.

    Files get mode 0644 or 0755 as git records them; symlinks stay symlinks.
    Raises SourceError for a submodule, which cannot be exported, and BadTreeEntry
    (check_tree finds both before any change).
    """
    _mkdir(dest)
    dirs = [dest]
    for item in _walk(state, path):
        target = dest / item.path
        if item.is_tree:
            _mkdir(target)
            dirs.append(target)
        else:
            _write_blob(state, item, target)
    for directory in reversed(dirs):
        fsync_dir(directory)


def check_tree(state: SourceState, path: str) -> None:
    """Check that the directory `path` of the fetched commit can be exported: every
    entry name one a checkout could hold, no submodule. Reads objects only.

    Raises BadTreeEntry or SourceError (see export_tree).
    """
    list(_walk(state, path))


def _walk(state: SourceState, path: str) -> Iterator[Entry]:
    """Every entry under `path` (the root for ''), parents first, each name checked,
    its path relative to `path`. Raises BadTreeEntry, or SourceError for a submodule."""
    top = _item(state, path)
    if top is None or not top.is_tree:
        raise SourceError(f"{path!r} is not a directory in the source", "")
    pending = [(top.oid, "")]
    with _crafted_as_error(path):
        while pending:
            oid, under = pending.pop()
            for item in state.objects.entries(oid, under):
                where = f"{path}/{item.path}" if path else item.path
                check_entry_name(item.name, where)
                if item.is_submodule:
                    raise _submodule(where)
                yield item
                if item.is_tree:
                    pending.append((item.oid, item.path))


def _item(state: SourceState, path: str) -> Entry | None:
    """The entry at `path` of the fetched commit (for '', its root tree), or None."""
    with _crafted_as_error(path):
        item = Entry(0o40000, "", state.objects.commit_tree(state.commit), "")
        for name in path.split("/") if path else ():
            if not item.is_tree:
                return None
            found = [e for e in state.objects.entries(item.oid) if e.name == name]
            if not found:
                return None
            item = found[0]
        return item


@contextlib.contextmanager
def _crafted_as_error(path: str) -> Iterator[None]:
    """Turn a tree object that cannot be parsed into BadTreeEntry."""
    try:
        yield
    except ValueError as exc:
        raise BadTreeEntry(
            f"the source holds, under {path!r}, a tree entry no checkout could hold ({exc}):"
            " the commit was crafted",
            "do not install from this source; ask its maintainer to check the repository",
        ) from exc


def _submodule(where: str) -> SourceError:
    return SourceError(
        f"{where} in the source is a submodule, which hs-tx cannot install",
        "vendor its files into the source repository instead",
    )


class BadTreeEntry(UsageError):
    """The source holds a tree entry no checkout could hold (crafted by hand)."""


def check_entry_name(name: str, where: str) -> None:
    """Refuse a git tree entry name that would leave its directory or is git's own.

    Raises BadTreeEntry (exit 2): nothing is written for such a source.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name or name.lower() == ".git":
        raise BadTreeEntry(
            f"the source holds a tree entry named {name!r} (at {where!r}), which no checkout"
            " could hold: the commit was crafted",
            "do not install from this source; ask its maintainer to check the repository",
        )


def _mkdir(path: Path) -> None:
    os.mkdir(path)
    os.chmod(path, 0o755)  # whatever hs-tx's own umask is


def _write_blob(state: SourceState, blob: Entry, target: Path) -> None:
    found = state.objects.read(blob.oid)
    if found is None:
        raise SourceError(f"the source clone lacks the object of {blob.path}", "fetch again")
    data = found.data
    if stat.S_ISLNK(blob.mode):
        os.symlink(os.fsdecode(data), target)
        return
    write_new(target, data, 0o755 if blob.mode & 0o111 else 0o644)
