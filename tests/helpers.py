"""Shared test helpers: sandboxes on real loop-mounted filesystems, module writers,
and an exact picture of a tree (content and every piece of metadata)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hs_txupdate.journal import identity_of

IN_CI = bool(os.environ.get("CI"))
REPO = Path(__file__).resolve().parent.parent


def need(condition: bool, why: str) -> None:
    """Skip locally, but fail loudly in CI, when a test's requirement is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must be able to run this test: {why}")
    pytest.skip(why)


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (argument list) for a test, capturing its output."""
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True)


@dataclass
class LoopFs:
    """A real filesystem in a sparse image, loop-mounted at `mount`."""

    fstype: str
    image: Path
    mount: Path
    device: str = ""

    def setup(self, size_mb: int) -> LoopFs:
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        if self.fstype == "btrfs":
            sh("mkfs.btrfs", "-q", "-f", self.image)
        else:
            sh("mkfs.ext4", "-q", "-F", self.image)
        self.device = sh("losetup", "--find", "--show", self.image).stdout.strip()
        self.mount.mkdir(parents=True, exist_ok=True)
        opts = "user_xattr,acl" if self.fstype == "ext4" else "defaults"
        sh("mount", "-t", self.fstype, "-o", opts, self.device, self.mount)
        return self

    def teardown(self) -> None:
        if self.mount.is_mount():
            sh("umount", "-l", self.mount, check=False)
        if self.device:
            sh("losetup", "-d", self.device, check=False)
        if self.image.exists():
            self.image.unlink()


@dataclass
class Sandbox:
    """A complete hs-tx setup: config, state dir, modules dir, data dir, service log."""

    root: Path
    backend: str = "auto"
    keep: int = 10
    extra_paths: list[str] = field(default_factory=list)
    source_url: str | None = None
    source_branch: str = "master"
    watch: list[str] | None = None  # the write audit's roots; default: data/
    system: str = "off"  # [scope] system: tests of the whole-system scope turn it on
    extra_config: str = ""  # more TOML, appended
    source_config: str = ""  # more keys of [source]

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def modules(self) -> Path:
        return self.root / "modules"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def service_log(self) -> Path:
        return self.root / "services.log"

    def create(self) -> Sandbox:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.modules.mkdir(exist_ok=True)
        self.data.mkdir(exist_ok=True)
        svc = self.root / "svc"
        svc.write_text(
            "#!/bin/sh\n"
            f'echo "$1 $2" >> {self.service_log}\n'
            'case "$2" in broken*) exit 1;; esac\n'
            'if test "$1" = stop; then rm -f "' + str(self.root) + '/active-$2"; exit 0; fi\n'
            'test "$1" = restart || test -e "' + str(self.root) + '/active-$2"\n'
        )
        svc.chmod(0o755)
        self.write_config()
        return self

    def write_config(self, **overrides: Any) -> None:
        extra = json.dumps(self.extra_paths)
        watch = json.dumps(self.watch if self.watch is not None else [str(self.data)])
        text = textwrap.dedent(
            f"""\
            state_dir = "{self.state}"
            modules_dir = "{self.modules}"
            [snapshot]
            backend = "{overrides.get("backend", self.backend)}"
            keep = {overrides.get("keep", self.keep)}
            [scope]
            extra_paths = {extra}
            watch = {watch}
            system = "{overrides.get("system", self.system)}"
            [runtime]
            path = "{self.root}/runtime"
            [net]
            guard = false
            [services]
            manager = "command"
            restart = ["{self.root}/svc", "restart", "{{unit}}"]
            is_active = ["{self.root}/svc", "is-active", "{{unit}}"]
            stop = ["{self.root}/svc", "stop", "{{unit}}"]
            """
        )
        text += self.extra_config
        if self.source_url:  # a JSON string is a TOML basic string
            text += (
                f'[source]\nurl = {json.dumps(self.source_url)}\nbranch = "{self.source_branch}"\n'
            )
            text += self.source_config
        self.config.write_text(text)

    def module(
        self,
        name: str,
        body: str,
        *,
        backup_paths: list[str | Path] | None = None,
        version: str = "1.0.0",
        extra_meta: dict[str, Any] | None = None,
        files: dict[str, str] | None = None,
    ) -> Path:
        """Write modules/<name>/index.json and index.py (body is the module's source)."""
        path = self.modules / name
        path.mkdir(parents=True, exist_ok=True)
        meta = {"schema_version": version, "name": name, "enabled": True, **(extra_meta or {})}
        index = {
            "metadata": meta,
            "configuration": {"backup_paths": [str(p) for p in backup_paths or []]},
        }
        (path / "index.json").write_text(json.dumps(index, indent=2))
        (path / "index.py").write_text(textwrap.dedent(body))
        for rel, text in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(textwrap.dedent(text))
        return path

    def writer_module(self) -> None:
        """Module `w`: data/f holds "before" and the run writes "after" into it.

        A full run writes 8 durable events: the plan, capture intent and done for
        the module dir and data, the write audit's start, the module's intent and done.
        """
        (self.data / "f").write_text("before")
        self.module(
            "w",
            f"""
            def main(args):
                open({str(self.data / "f")!r}, "w").write("after")
                return {{"success": True}}
            """,
            backup_paths=[self.data],
        )

    def hs_tx(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run the real `hs-tx` command against this sandbox's config."""
        return subprocess.run(
            [sys.executable, "-m", "hs_txupdate.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def journal_json(self, tx_id: int) -> dict[str, Any]:
        result = self.hs_tx("show", str(tx_id), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def tx_key(self, tx_id: int) -> str:
        """`<journal-uuid>-<txid>`: how snapshots of `tx_id` of this journal are named."""
        return f"{journal_uuid(self.state / 'journal.db')}-{tx_id}"

    def tx_dir(self, tx_id: int) -> Path:
        """The state dir's snapshot dir (manifests, archives) of `tx_id`."""
        return self.state / "snapshots" / self.tx_key(tx_id)


def journal_uuid(journal: Path) -> str:
    """The identity a journal file was created with."""
    found = identity_of(journal)
    assert found, f"{journal} has no identity"
    return found


# Source for modules that report their pids: hs-tx runs modules in a pid namespace of
# the run's own (for the write audit), where os.getpid() is not the host's pid.
HOST_PID_SRC = """
def host_pid(pid):
    import os
    ns = os.readlink("/proc/self/ns/pid")
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                        return int(entry)
        except OSError:
            pass
    return pid
"""


def tree_state(root: Path) -> dict[str, Any]:
    """Everything about a tree that a restore must keep: per entry type, mode, owner,
    size, mtime, content digest, symlink target, device numbers, xattrs (ACLs and
    capabilities included), and which entries are hard links of each other."""
    if not os.path.lexists(root):
        return {"<absent>": True}
    out: dict[str, Any] = {}
    inode_names: dict[tuple[int, int], str] = {}
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        paths += sorted(
            p
            for p in root.rglob("*")
            if not p.name.startswith(".hs-tx-") and ".hs-tx-snapshots" not in p.parts
        )
    for path in paths:
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        entry: dict[str, Any] = {
            "mode": stat.filemode(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": sorted(
                (n, os.getxattr(path, n, follow_symlinks=False).hex())
                for n in os.listxattr(path, follow_symlinks=False)
            ),
        }
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            key = (st.st_dev, st.st_ino)
            entry["link_of"] = inode_names.setdefault(key, rel)
            entry["nlink"] = st.st_nlink
        elif stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry["rdev"] = st.st_rdev
        out[rel] = entry
    return out


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, within: float = 5.0) -> bool:
    """Poll until `pid` is gone or `within` seconds pass; return whether it is gone."""
    deadline = time.monotonic() + within
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def module_files(
    name: str,
    body: str,
    *,
    version: str = "1.0.0",
    backup_paths: list[str | Path] | None = None,
    meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> dict[str, str]:
    """The files of one module dir (relative path -> text), HOMESERVER format."""
    index: dict[str, Any] = {
        "metadata": {"schema_version": version, "name": name, "enabled": True, **(meta or {})},
        "configuration": {"backup_paths": [str(p) for p in backup_paths or []]},
        **(extra or {}),
    }
    out = {"index.json": json.dumps(index, indent=2), "index.py": textwrap.dedent(body)}
    out.update({k: textwrap.dedent(v) for k, v in (files or {}).items()})
    return out


@dataclass
class GitSource:
    """A real git source: a bare repository (the remote) and a work clone to publish from."""

    root: Path
    branch: str = "master"

    @property
    def bare(self) -> Path:
        return self.root / "remote.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.org",
        }
        result = subprocess.run(
            ["git", *args],
            cwd=cwd or self.work,
            env=env,
            input=stdin,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def create(self) -> GitSource:
        self.root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "--bare", "-b", self.branch, str(self.bare), cwd=self.root)
        self.git("init", "-q", "-b", self.branch, str(self.work), cwd=self.root)
        self.git("remote", "add", "origin", str(self.bare))
        return self

    def publish(
        self,
        modules: dict[str, dict[str, str] | None],
        message: str = "publish",
        top: dict[str, Any] | None = None,
    ) -> str:
        """Write module dirs (None removes one), commit and push; return the commit."""
        for name, files in modules.items():
            mod = self.work / "modules" / name
            if files is None:
                subprocess.run(["rm", "-rf", str(mod)], check=True)
                continue
            for rel, text in files.items():
                (mod / rel).parent.mkdir(parents=True, exist_ok=True)
                (mod / rel).write_text(text)
        if top is not None:
            (self.work / "index.json").write_text(json.dumps(top, indent=2))
        (self.work / "modules").mkdir(exist_ok=True)
        (self.work / "modules" / ".keep").touch()
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        self.git("push", "-q", "--force", "origin", f"HEAD:{self.branch}")
        return self.git("rev-parse", "HEAD")
