"""The hs-tx demo: modules published to a git source; a good update that commits,
then a broken version 2 that rolls back to the old code and data.

Builds a throwaway sandbox (its own config, state dir, modules dir, data paths
and a local git repository as the source) on a loop-mounted btrfs image when
run as root with btrfs-progs, on the tar backend in a temp dir otherwise; runs
the real `hs-tx` command against it; and removes everything at the end. It
never reads /etc/hs-tx or touches the host's real paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import ClassVar

NOTES_MODULE = """
from pathlib import Path
from updates.index import log_message

def main(args):
    log_message("notes: nothing to migrate")
    return {{"success": True}}
"""

GOOD_MODULE = """
from pathlib import Path
from updates.index import log_message

DATA = Path({data!r})

def main(args):
    conf = DATA / "config.ini"
    conf.write_text("version = 2\\nlisten = 8080\\n")
    (DATA / "CHANGELOG").write_text("2: listen on 8080\\n")
    log_message("webapp: config moved to version 2")
    return {{"success": True}}
"""

BAD_MODULE = """
from pathlib import Path
from updates.index import log_message

DATA = Path({data!r})

def main(args):
    (DATA / "config.ini").write_text("version = 3\\nlisten = ???\\n")
    (DATA / "CHANGELOG").unlink()
    (DATA / "half-written.tmp").write_text("partial")
    log_message("webapp: wrote version 3, now migrating the database...")
    return {{"success": False, "error": "database migration failed"}}
"""


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def hs_tx(config: Path, *args: str) -> int:
    """Run the real hs-tx command; its output goes straight to the terminal."""
    cmd = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(config), *args]
    print("$ hs-tx " + " ".join(args), flush=True)
    env = {**os.environ, "HS_TX_CONFIG": str(config)}
    return subprocess.run(cmd, env=env, stderr=subprocess.STDOUT).returncode


def show_tree(data: Path) -> None:
    for path in sorted(data.rglob("*")):
        if path.is_file():
            body = path.read_text().strip().replace("\n", " | ")
            print(f"    {path.relative_to(data)}: {body}")


class Sandbox:
    """A temp dir, on a loop-mounted btrfs when possible; removed by close()."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="hs-tx-demo-"))
        self.device = ""
        self.root = self.top / "root"
        self.root.mkdir()
        if os.geteuid() == 0 and shutil.which("mkfs.btrfs") and shutil.which("losetup"):
            image = self.top / "demo.img"
            with open(image, "wb") as f:
                f.truncate(512 << 20)
            run(["mkfs.btrfs", "-q", "-f", str(image)])
            self.device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
            run(["mount", "-t", "btrfs", self.device, str(self.root)])
        self.kind = "loop-mounted btrfs (btrfs snapshots)" if self.device else "temp dir (tar)"

    def close(self) -> None:
        if self.device:
            run(["umount", str(self.root)], check=False)
            run(["losetup", "-d", self.device], check=False)
        shutil.rmtree(self.top, ignore_errors=True)


def write_setup(root: Path) -> tuple[Path, Path, Path]:
    """Config, modules dir and data dir of the demo; returns (config, modules, data)."""
    modules, data, state = root / "modules", root / "srv/webapp", root / "state"
    modules.mkdir()
    data.mkdir(parents=True)
    (data / "config.ini").write_text("version = 1\nlisten = 80\n")
    service = root / "demo-service"
    service.write_text(f'#!/bin/sh\necho "$1 $2" >> {root}/services.log\n')
    service.chmod(0o755)
    config = root / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            state_dir = "{state}"
            modules_dir = "{modules}"
            [snapshot]
            backend = "auto"
            keep = 5
            [scope]
            watch = ["{root / "srv"}"]
            [runtime]
            path = "{root / "runtime"}"
            [net]
            guard = false
            [services]
            manager = "command"
            restart = ["{service}", "restart", "{{unit}}"]
            is_active = ["{service}", "is-active", "{{unit}}"]
            """
        )
    )
    return config, modules, data


class Source:
    """A local git repository that plays the update source (a bare remote + a work clone)."""

    ENV: ClassVar[dict[str, str]] = {
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@example.org",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@example.org",
    }

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "updates.git", root / "updates-work"
        self.git("init", "-q", "--bare", "-b", "master", str(self.bare), cwd=root)
        self.git("init", "-q", "-b", "master", str(self.work), cwd=root)

    def git(self, *args: str, cwd: Path | None = None) -> None:
        env = {**os.environ, **self.ENV}
        subprocess.run(
            ["git", *args], cwd=cwd or self.work, env=env, check=True, capture_output=True
        )

    def publish(self, name: str, source: str, version: str, data: Path | None) -> None:
        mod = self.work / "modules" / name
        mod.mkdir(parents=True, exist_ok=True)
        index = {
            "metadata": {
                "schema_version": version,
                "name": name,
                "enabled": True,
                "priority": 50,
                "service_name": f"{name}.service",
            },
            "configuration": {"backup_paths": [str(data)] if data else []},
        }
        (mod / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        (mod / "index.py").write_text(textwrap.dedent(source.format(data=str(data))))

    def push(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", str(self.bare), "HEAD:master")
        print(f"  published: {message}")


def installed_version(modules: Path, name: str) -> str:
    index = json.loads((modules / name / "index.json").read_text())
    return str(index["metadata"]["schema_version"])


def main() -> int:
    sandbox = Sandbox()
    try:
        config, modules, data = write_setup(sandbox.root)
        source = Source(sandbox.root)
        with open(config, "a") as f:
            f.write(f'[source]\nurl = "file://{source.bare}"\nbranch = "master"\n')
        say(f"sandbox: {sandbox.root} on a {sandbox.kind}")
        show_tree(data)

        say("version 1 of the modules is published to the git source")
        source.publish("webapp", GOOD_MODULE, "1.0.0", data)
        source.publish("notes", NOTES_MODULE, "1.0.0", None)
        source.push("webapp 1.0.0, notes 1.0.0")
        say("update 1: hs-tx installs both modules and runs them")
        first = hs_tx(config, "update")
        print(f"exit status {first} (0: committed)")
        print(f"  installed webapp {installed_version(modules, 'webapp')}")
        show_tree(data)

        say("version 2 of webapp is published; it changes files, deletes one, then fails")
        source.publish("webapp", BAD_MODULE, "2.0.0", data)
        source.push("webapp 2.0.0 (broken)")
        second = hs_tx(config, "update")
        print(f"exit status {second} (1: rolled back, the system is as before)")
        print(f"  installed webapp {installed_version(modules, 'webapp')} (the old code is back)")
        print("  files after the rollback (the same as after update 1):")
        show_tree(data)
        log = sandbox.root / "services.log"
        calls = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        restarted = [c[1] for c in calls if len(c) == 2 and c[0] == "restart"]
        print(f"  services restarted after the rollback: {' '.join(restarted) or 'none'}")

        say("the audit trail")
        hs_tx(config, "history")
        ok = (
            first == 0
            and second == 1
            and installed_version(modules, "webapp") == "1.0.0"
            and "version = 2" in (data / "config.ini").read_text()
        )
        say("demo finished: " + ("as expected" if ok else "NOT as expected"))
        return 0 if ok else 1
    finally:
        sandbox.close()


if __name__ == "__main__":
    sys.exit(main())
