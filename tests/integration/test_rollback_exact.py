"""A module that changes everything it can and then fails: every path comes back exactly."""

from __future__ import annotations

import json
import os
import subprocess

from tests.helpers import Sandbox, tree_state

MESS_UP = """
import os, subprocess
D = {data!r}

def main(args):
    # same size, same mtime, other bytes
    p = D + "/app/same.txt"
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"XXXX")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(D + "/app/conf.ini", "a") as f:
        f.write("changed=1\\n")
    open(D + "/app/new.txt", "w").write("created by the run")
    os.makedirs(D + "/app/newdir/deeper")
    os.unlink(D + "/app/deleted.txt")
    subprocess.run(["rm", "-rf", D + "/app/gone"], check=True)
    os.chmod(D + "/app/mode.sh", 0o600)
    os.chown(D + "/app/owned.txt", 4242, 4242)
    os.setxattr(D + "/app/x.txt", "user.color", b"red")
    os.removexattr(D + "/app/x.txt", "user.keep")
    subprocess.run(["setfacl", "-m", "u:4242:rwx", D + "/app/acl.txt"], check=True)
    subprocess.run(["setcap", "-r", D + "/app/cap.bin"], check=True)
    os.unlink(D + "/app/link2.txt")
    open(D + "/app/link2.txt", "w").write("hello")
    os.unlink(D + "/app/sym")
    os.symlink("/etc/passwd", D + "/app/sym")
    with open(D + "/app/sparse.img", "r+b") as f:
        f.seek(50 << 20)
        f.write(b"dirty")
    os.rename(D + "/app/dir", D + "/app/dir-moved")
    os.chmod(D + "/app", 0o700)
    os.mkdir(D + "/absent")
    open(D + "/absent/file", "w").write("should vanish")
    print("messed up everything")
    return {{"success": False, "error": "deliberate failure"}}
"""


def populate(data: str) -> None:
    """A tree with every kind of entry and metadata a restore must keep."""
    app = f"{data}/app"
    os.makedirs(f"{app}/gone/sub")
    os.makedirs(f"{app}/dir/inner")
    for name in (
        "same.txt",
        "conf.ini",
        "deleted.txt",
        "owned.txt",
        "x.txt",
        "acl.txt",
        "gone/sub/f",
        "dir/inner/f",
    ):
        with open(f"{app}/{name}", "w") as f:
            f.write(f"original {name}\n")
    with open(f"{app}/mode.sh", "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(f"{app}/mode.sh", 0o4755)
    os.chown(f"{app}/owned.txt", 1000, 1000)
    os.setxattr(f"{app}/x.txt", "user.keep", b"yes")
    subprocess.run(["setfacl", "-m", "u:1000:r", f"{app}/acl.txt"], check=True)
    with open(f"{app}/cap.bin", "wb") as f:
        f.write(b"\x7fELF")
    subprocess.run(["setcap", "cap_net_bind_service=+ep", f"{app}/cap.bin"], check=True)
    with open(f"{app}/link1.txt", "w") as f:
        f.write("hello")
    os.link(f"{app}/link1.txt", f"{app}/link2.txt")
    os.symlink("link1.txt", f"{app}/sym")
    os.mkfifo(f"{app}/fifo")
    with open(f"{app}/sparse.img", "wb") as f:
        f.truncate(100 << 20)
        f.seek(10 << 20)
        f.write(b"data in the middle")
    os.utime(f"{app}/same.txt", ns=(1_000_000_000, 1_500_000_000_123_456_789))


def test_rollback_restores_every_detail(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    populate(str(sbx.data))
    (sbx.root / "active-messd").touch()  # running before: the rollback restarts it
    sbx.module(
        "mess",
        MESS_UP.format(data=str(sbx.data)),
        backup_paths=[sbx.data / "app", sbx.data / "absent"],
        extra_meta={"service_name": "messd"},
    )
    before = {p: tree_state(sbx.data / p) for p in ("app", "absent")}
    modules_before = tree_state(sbx.modules)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert "deliberate failure" in result.stderr
    assert "messed up everything" in result.stderr
    after = {p: tree_state(sbx.data / p) for p in ("app", "absent")}
    assert after == before
    assert tree_state(sbx.modules) == modules_before
    sparse = os.stat(sbx.data / "app/sparse.img")
    assert sparse.st_blocks * 512 < 10 << 20, "the sparse file was filled in"
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    assert tx["exit_code"] == 1
    assert "restart messd" in sbx.service_log.read_text()
    assert not list(sbx.data.glob(".hs-tx-*")), "staging or temp names were left behind"


def test_commit_keeps_changes_and_records_changed_paths(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("one")
    (sbx.data / "b").mkdir()
    sbx.module(
        "writer",
        f"""
        def main(args):
            open({str(sbx.data / "a/f")!r}, "w").write("two")
            return {{"success": True}}
        """,
        backup_paths=[sbx.data / "a", sbx.data / "b"],
    )

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert (sbx.data / "a/f").read_text() == "two"
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    changed = {p["path"]: p["changed"] for p in tx["paths"]}
    assert changed[str(sbx.data / "a")] is True
    assert changed[str(sbx.data / "b")] is False
    assert changed[str(sbx.modules)] is False  # the modules dir, one path
    backends = {p["backend"] for p in tx["paths"]}
    assert backends == ({"btrfs"} if "btrfs" in str(sbx.root) else {"tar"})
    if backends == {"btrfs"}:
        # three paths on one subvolume: one snapshot serves them all
        store = sbx.root.parent / ".hs-tx-snapshots"
        first = f"{sbx.tx_key(1)}-0"
        assert sorted(p.name for p in store.iterdir() if p.is_dir()) == [first]
        assert {json.loads(p["snapshot"])["snapshot"] for p in tx["paths"]} == {str(store / first)}


def test_rollback_of_a_few_changes_in_a_larger_tree(fs_sandbox: Sandbox) -> None:
    """Without hard links the tar backend extracts only what it puts back; exact either way."""
    sbx = fs_sandbox
    tree = sbx.data / "tree"
    for i in range(300):
        sub = tree / f"d{i // 30}" / f"e{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_text(f"file {i}\n" * (i % 7 + 1))
        os.chmod(sub / f"f{i}", 0o600 + (i % 3) * 0o40)
    os.setxattr(tree / "d3", "user.tag", b"three")
    sbx.module(
        "few",
        f"""
        import os, shutil
        T = {str(tree)!r}
        def main(args):
            open(T + "/d1/e1/f31", "w").write("rewritten")
            os.unlink(T + "/d2/e0/f60")
            shutil.rmtree(T + "/d4/e2")
            os.makedirs(T + "/d9/new/deep")
            open(T + "/d9/new/deep/x", "w").write("new")
            os.chmod(T + "/d5", 0o711)
            os.removexattr(T + "/d3", "user.tag")
            return {{"success": False, "error": "nope"}}
        """,
        backup_paths=[tree],
    )
    before = tree_state(tree)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert tree_state(tree) == before
    events = sbx.journal_json(1)["events"]
    restored = [e for e in events if e["step"] == "restore" and e["status"] == "done"]
    assert restored and restored[0]["detail"]["entries"] >= 6
    put_back = sum(e["detail"]["checked"] for e in restored)  # each read back afterwards
    assert put_back >= 6
    assert f"as before ({put_back} entries restored, each read back and checked)" in result.stderr


def test_rollback_brings_back_a_whole_deleted_tree(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    tree = sbx.data / "tree"
    (tree / "sub/deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub/deeper/leaf.bin").write_bytes(b"\0leaf" * 100)
    os.chmod(tree / "sub", 0o750)
    sbx.module(
        "wipe",
        f"""
        import shutil
        def main(args):
            shutil.rmtree({str(tree)!r})
            return {{"success": False, "error": "wiped and failed"}}
        """,
        backup_paths=[tree],
    )
    before = tree_state(tree)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert tree_state(tree) == before
