"""Workers forked by the run's fork server see what a worker started on its own sees,
and a run whose fork server dies goes on without it. (That no server outlives its run
is the pid namespace's doing under the audit, the server's closing otherwise.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from hs_txupdate.base.proc import child_env
from hs_txupdate.modules import cgroup
from hs_txupdate.modules.forkserver import ForkServer
from tests.helpers import Sandbox

RUN_TIMEOUT = 120

# prints what a module can observe of the process it runs in
PROBE = """
import json, os, random, signal, sys

def main(args):
    cgroup = open("/proc/self/cgroup").read().strip()
    seen = {{
        "forked_from_hs_tx": "hs_txupdate.cli.main" in sys.modules,
        "bytecode": not sys.dont_write_bytecode,
        "streams": [(s.encoding, s.errors, s.write_through) for s in (sys.stdout, sys.stderr)],
        "cwd": os.getcwd(),
        "signals": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
                                                       signal.SIGHUP, signal.SIGPIPE)],
        "fds": sorted(os.listdir("/proc/self/fd")),
        "session_leader": os.getsid(0) == os.getpid(),
        "umask": os.umask(0o022),
        "state_dir": os.environ.get("HS_TX_STATE_DIR"),
        "channel_env": "HS_TX_CHANNEL" in os.environ,
        "cgroup": cgroup,
        "stdin": os.read(0, 10).decode(),
        "random": random.random(),
        "modules": sorted(m for m in ("sqlalchemy", "pyroute2") if m in sys.modules),
        "argv0": sys.argv[0],
        "pidns": os.readlink("/proc/self/ns/pid"),
    }}
    print("SEEN=" + json.dumps(seen), flush=True)
    sys.stderr.write("to stderr\\n")
    return {{"success": True}}
"""


def _seen(stderr: str, name: str) -> dict:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"[{name}] SEEN=")]
    assert len(lines) == 1, stderr
    seen: dict = json.loads(lines[0].split("SEEN=", 1)[1])
    return seen


def test_a_forked_worker_sees_what_a_worker_of_its_own_sees(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    for name in ("a", "b"):
        sbx.module(name, PROBE.format())

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    a, b = _seen(result.stderr, "a"), _seen(result.stderr, "b")
    assert a["session_leader"] and a["umask"] == 0o022 and a["stdin"] == ""
    assert a["state_dir"] == str(sbx.state)
    assert not a["channel_env"], "the channel is taken out before the module runs"
    assert a["cgroup"].endswith("-1-a-main") and b["cgroup"].endswith("-1-b-main")
    assert a["modules"] == [] and a["argv0"] == str(sbx.modules / "a" / "index.py")
    assert a["random"] != b["random"], "each worker seeds its own random state"
    # b was forked ahead of its request, once a had ended: it holds none of a's pipes
    assert b["fds"] == a["fds"]
    assert "[a] to stderr" in result.stderr
    assert "fork server ended" not in result.stderr
    # the server starts while the audit's reader does, already inside the run's pid
    # namespace, whose processes the audit tells from everyone else's
    assert a["pidns"] == b["pidns"] != os.readlink("/proc/self/ns/pid")
    audit = [e for e in sbx.journal_json(1)["events"] if e["step"] == "start"]
    assert audit and audit[0]["detail"]["method"] == "fanotify"


def test_a_run_whose_fork_server_dies_goes_on(tar_sandbox: Sandbox) -> None:
    """The first module kills its parent, the fork server: its own result still counts,
    and the next module starts on its own."""
    sbx = tar_sandbox
    sbx.module(
        "a_killer",
        "import os, signal\n"
        "def main(args):\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        "    return {'success': True}\n",
    )
    sbx.module("b_next", PROBE.format())

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert "the fork server ended; the next modules start on their own" in result.stderr
    assert _seen(result.stderr, "b_next")["session_leader"]
    runs = sbx.journal_json(1)["modules"]
    assert [(r["name"], r["status"]) for r in runs] == [
        ("a_killer", "success"),
        ("b_next", "success"),
    ]


def test_a_server_forked_from_hs_tx_gives_workers_what_a_spawned_one_does(
    tar_sandbox: Sandbox,
) -> None:
    """The first run creates the journal (SQLAlchemy is imported), so its server is a new
    interpreter; the next run's server is hs-tx forked, which no worker can tell apart
    except by the modules hs-tx had imported."""
    sbx = tar_sandbox
    sbx.module("a", PROBE.format())

    first = sbx.hs_tx("update", timeout=RUN_TIMEOUT)
    sbx.module("a", PROBE.format(), version="1.0.1")  # a change, so the run is not idle
    second = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert first.returncode == 0 and second.returncode == 0, second.stderr
    spawned, forked = _seen(first.stderr, "a"), _seen(second.stderr, "a")
    assert not spawned.pop("forked_from_hs_tx") and forked.pop("forked_from_hs_tx")
    assert not forked["bytecode"] and forked["streams"][0] == ["utf-8", "surrogateescape", True]
    for key in ("random", "cgroup", "pidns"):  # differ between any two runs
        spawned.pop(key), forked.pop(key)
    assert forked == spawned
    assert not list(sbx.modules.rglob("__pycache__"))


def _holders(path: Path) -> set[int]:
    """The pids of processes with an fd open on `path`."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                    found.add(int(proc.name))
    return found


def test_the_warm_up_leaves_no_child_and_holds_none_of_hs_tx_s_files(tmp_path: Path) -> None:
    """What moves into its own cgroup before the snapshot (so that the first module's
    move does not wait) is a grandchild that holds none of hs-tx's files (the lock)."""
    children = Path(f"/proc/self/task/{os.getpid()}/children")
    before = children.read_text().split()
    lock = tmp_path / "lock"
    with lock.open("w"):
        cgroup.warm_up_detached()
        assert children.read_text().split() == before, "its child was reaped at once"
        assert _holders(lock) == {os.getpid()}


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _gone(pid: int) -> bool:
    """True once `pid` is no process, not even a zombie."""
    return not Path(f"/proc/{pid}").exists()


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _run_in(server: ForkServer, modules: Path, name: str) -> tuple[int, int, dict]:
    """Run module `name` in a worker of `server`; its pid, exit status and outcome."""
    out_r, out_w = os.pipe()
    result_r, result_w = os.pipe()
    worker = server.launch(
        [str(modules), name, "{fd 1}", "null", "main"], child_env(), [out_w, result_w]
    )
    os.close(out_w)
    os.close(result_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(result_r, "rb") as result:
        out.read()
        outcome = json.loads(result.read())
    return worker.pid, worker.wait(10), outcome


def test_a_spare_that_dies_waiting_is_replaced_and_none_outlives_its_server(
    tmp_path: Path,
) -> None:
    """The server forks each worker ahead of its request (a spare): one killed while
    it waits is replaced, so the next module still runs; when the server is closed,
    the spare it holds ends with it."""
    modules = tmp_path / "modules"
    (modules / "m").mkdir(parents=True)
    (modules / "m" / "index.py").write_text("def main(args):\n    return True\n")
    server = ForkServer.spawn(sys.executable, None, child_env())
    try:
        _until(lambda: len(_children(server.proc.pid)) == 1, "a spare is forked at start")
        (spare,) = _children(server.proc.pid)
        os.kill(spare, signal.SIGKILL)
        _until(lambda: _gone(spare), "the server reaps the spare it lost")

        pid, status, outcome = _run_in(server, modules, "m")

        assert pid != spare and status == 0 and outcome["outcome"] == "success"
        _until(lambda: len(_children(server.proc.pid)) == 1, "the next spare is forked")
        (spare,) = _children(server.proc.pid)
        assert spare != pid
    finally:
        server.close()
    assert _gone(spare), "the spare ended with its server"
