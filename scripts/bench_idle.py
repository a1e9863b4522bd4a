"""Benchmark rows: an update with nothing to do, hs-tx against the HOMESERVER orchestrator.

Both run as whole processes, in turn, round by round, on the same machine, from the
same git source (a local bare repository): the orchestrator's own tree (a checkout of
the published homeserversltd/updates repository, named with --orchestrator, never
copied into this project) with its modules replaced by N modules in the published
style that do nothing, and its index.json version set to hs-tx's, so neither has
anything to update. hs-tx runs without the network guard and with `command` service
control (what a box like this one has); the orchestrator's gunicorn restart finds a
`systemctl` on PATH that answers as systemctl does on a box without that unit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hs_txupdate import __version__

# the orchestrator writes this when it exists; the benchmark never touches a real one
HOMESERVER_CONFIG = Path("/var/www/homeserver")
INDEX_PY = (
    '"""A module that does nothing."""\n\n\ndef main(args=None):\n    return {"success": True}\n'
)

# rounds of each count (medians shown): the orchestrator and hs-tx take a fifth of a second
IDLE_ROUNDS = 9
Row = list[Any]  # operation, seconds, reference, its seconds[, peak RSS KiB]
Command = tuple[list[str], dict[str, str] | None]  # argv, environment (None: this one's)
Runner = Callable[[list[Command], int], list[tuple[float, int]]]


def bench_idle(
    top: Path,
    counts: tuple[int, ...],
    orchestrator: Path | None,
    processes: Runner,
    rows: list[Row],
) -> None:
    """Rows for `hs-tx update` with nothing to do at each of `counts` modules, against
    the orchestrator (when `orchestrator` names its checkout) and `python -c pass`, and
    the cost per module of each (from the fewest modules to the most)."""
    skip = _why_skip(orchestrator)
    if skip is not None:
        print(f"bench: orchestrator rows skipped: {skip}", file=sys.stderr)
    hs_tx: dict[int, float] = {}
    orch: dict[int, float] = {}
    for count in counts:
        box = top / f"idle-{count}"
        url = _source(box, count, orchestrator if skip is None else None)
        commands: list[Command] = [
            ([sys.executable, "-c", "pass"], None),
            _hs_tx_box(box, url, count),
        ]
        if skip is None and orchestrator is not None:
            commands.append(_orchestrator_box(box, url))
        for argv, env in commands[1:]:  # a first run each, untimed: clones, first journal
            subprocess.run(argv, env=env, capture_output=True, check=False)
        results = processes(commands, IDLE_ROUNDS)
        (t_python, _), (hs_tx[count], rss) = results[:2]
        what = f"hs-tx update, nothing to do, {count} modules"
        if len(results) > 2:
            orch[count] = results[2][0]
            rows.append([what, hs_tx[count], "HOMESERVER orchestrator", orch[count], rss])
        rows.append([what, hs_tx[count], "python -c pass", t_python, rss])
    low, high = min(counts), max(counts)
    if low == high:
        return
    what = f"hs-tx update, per module ({low} to {high} modules)"
    per = (hs_tx[high] - hs_tx[low]) / (high - low)
    if orch:
        rows.append(
            [what, per, "the orchestrator, per module", (orch[high] - orch[low]) / (high - low)]
        )
    rows.append([what, per, "python -c pass (one interpreter start)", t_python])


def bench_guard(top: Path, count: int, processes: Runner, rows: list[Row]) -> None:
    """The network guard's own row: an update with nothing to do at `count` modules with
    `[net] guard = true` against the same with the guard off, both inside a network
    namespace of the benchmark's own (a veth pair with addresses and default routes:
    what the guard captures and checks), in turn, round by round. The namespace is
    deleted however the rows end; without one, the row is skipped, saying why."""
    name = f"hs-tx-bench-{os.getpid()}"
    try:
        _guarded_namespace(name)
    except (OSError, subprocess.CalledProcessError) as exc:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        said = getattr(exc, "stderr", None) or b""
        why = said.decode(errors="replace").strip() or str(exc)
        print(f"bench: network guard row skipped: no network namespace ({why})", file=sys.stderr)
        return
    try:
        url = _source(top / "guard-source", count, None)
        enter = ["nsenter", f"--net=/run/netns/{name}"]
        commands: list[Command] = []
        for guard in ("true", "false"):
            argv, env = _hs_tx_box(top / f"guard-{guard}", url, count)
            config = Path(argv[argv.index("--config") + 1])
            config.write_text(config.read_text().replace("guard = false", f"guard = {guard}"))
            commands.append(([*enter, *argv], env))
        for argv, env in commands:  # a first run each, untimed: clones, first journal
            subprocess.run(argv, env=env, capture_output=True, check=False)
        (t_on, rss), (t_off, _) = processes(commands, IDLE_ROUNDS)
        what = f"hs-tx update, nothing to do, {count} modules, network guard on"
        rows.append([what, t_on, "the same with the guard off", t_off, rss])
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _guarded_namespace(name: str) -> None:
    """Make network namespace `name`: lo, and a veth pair whose veth0 has an IPv4 and
    an IPv6 address and the default routes (documentation addresses). Raises
    CalledProcessError or OSError."""
    ip = ["nsenter", f"--net=/run/netns/{name}", "ip"]
    steps = [
        ["ip", "netns", "add", name],
        [*ip, "link", "set", "lo", "up"],
        [*ip, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
        [*ip, "address", "add", "192.0.2.10/24", "dev", "veth0"],
        [*ip, "address", "add", "2001:db8::10/64", "dev", "veth0", "nodad"],
        [*ip, "link", "set", "veth0", "up"],
        [*ip, "link", "set", "veth1", "up"],
        [*ip, "route", "add", "default", "via", "192.0.2.1", "dev", "veth0"],
        [*ip, "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "veth0"],
    ]
    for argv in steps:
        subprocess.run(argv, capture_output=True, check=True)


def _why_skip(orchestrator: Path | None) -> str | None:
    if orchestrator is None:
        return "no --orchestrator PATH (a checkout of homeserversltd/updates) given"
    if not (orchestrator / "index.py").is_file() or not (orchestrator / "__init__.py").is_file():
        return f"{orchestrator} is not a checkout of homeserversltd/updates"
    if HOMESERVER_CONFIG.exists():
        return f"{HOMESERVER_CONFIG} exists here, and the orchestrator would write it"
    return None


def _modules(where: Path, count: int) -> None:
    """`count` modules in the published style (index.json, index.py, __init__.py); with
    none, the modules dir still exists in git (a source needs one)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "README.md").write_text("Update modules, one directory each.\n")
    for n in range(count):
        name = f"idle{n:02d}"
        mod = where / name
        mod.mkdir(parents=True)
        meta = {"schema_version": "1.0.0", "name": name, "enabled": True, "priority": n}
        (mod / "index.json").write_text(json.dumps({"metadata": meta, "configuration": {}}))
        (mod / "index.py").write_text(INDEX_PY)
        (mod / "__init__.py").write_text("from .index import main\n")


def _source(box: Path, count: int, orchestrator: Path | None) -> str:
    """The bare repository both read: the orchestrator's tree when there is one, its
    modules replaced, its version set to hs-tx's. Returns its URL."""
    bare = box / "source.git"
    work = box / "source-work"
    (work / "modules").mkdir(parents=True)
    if orchestrator is not None:
        archive = subprocess.run(
            ["git", "-C", str(orchestrator), "archive", "HEAD"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        shutil.rmtree(work / "modules")
        (work / "modules").mkdir()
        (work / "requirements.txt").unlink(missing_ok=True)  # both on the same interpreter
    index = work / "index.json"
    data = json.loads(index.read_text()) if index.exists() else {"metadata": {}}
    data["metadata"].update(schema_version=__version__, branch="master")
    index.write_text(json.dumps(data, indent=4))
    _modules(work / "modules", count)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "master", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "source"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return f"file://{bare}"


def _hs_tx_box(box: Path, url: str, count: int) -> Command:
    """A config for hs-tx under `box`, its modules installed as the source `url` has
    them. Returns its command."""
    hs = box / "hs-tx"
    (hs / "modules").mkdir(parents=True)
    _modules(hs / "modules", count)
    config = hs / "config.toml"
    config.write_text(
        f'state_dir = "{hs / "state"}"\nmodules_dir = "{hs / "modules"}"\n'
        f'[scope]\nwatch = ["{box}"]\n[source]\nurl = "{url}"\nbranch = "master"\n'
        f'[runtime]\npath = "{hs / "runtime"}"\n[net]\nguard = false\n'
        '[services]\nmanager = "command"\nrestart = ["/bin/true", "{unit}"]\n'
    )
    return [str(Path(sys.executable).with_name("hs-tx")), "--config", str(config), "update"], None


def _orchestrator_box(box: Path, url: str) -> Command:
    """The orchestrator installed under `box` from the source `url` as on a HOMESERVER
    box (its package dir holds its modules and index.json). Returns its command."""
    lib = box / "orchestrator" / "lib"
    subprocess.run(["git", "clone", "-q", url, str(lib / "updates")], check=True)
    shutil.rmtree(lib / "updates" / ".git")
    stub = box / "orchestrator" / "bin"
    stub.mkdir()
    # as systemctl answers on a box without gunicorn (this one): the unit is not found
    (stub / "systemctl").write_text('#!/bin/sh\necho "Unit $2 not found." >&2\nexit 5\n')
    (stub / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env["PYTHONPATH"] = str(lib)
    clone = str(box / "orchestrator" / "clone")
    argv = [sys.executable, "-m", "updates.index", "--repo-url", url, "--local-repo", clone]
    return [*argv, "--modules-path", str(lib / "updates")], env
