"""The fetch has a size and a time limit, and nothing of the clone's own (hooks, config,
alternates) or of the source tree's (attributes, LFS filters) takes part in it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import GitSource, Sandbox, module_files

OK = """
def main(args):
    return {"success": True}
"""


def _limits(sbx: Sandbox, **values: int) -> None:
    sbx.source_config = "".join(f"{k} = {v}\n" for k, v in values.items())
    sbx.write_config()


def test_a_fetch_bigger_than_the_limit_is_refused_and_deleted(
    src: tuple[Sandbox, GitSource],
) -> None:
    sbx, source = src
    source.publish({"m": module_files("m", OK)})
    assert sbx.hs_tx("update").returncode == 0
    packs = sbx.state / "source/objects/pack"
    before = sorted(os.listdir(packs))
    big = source.work / "modules/m/blob.bin"
    big.write_bytes(os.urandom(3 << 20))  # random: it does not compress
    source.publish({"m": module_files("m", OK, version="2.0.0")})
    _limits(sbx, max_fetch_mb=1)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert "more than 1 MiB ([source] max_fetch_mb)" in result.stderr
    assert sorted(os.listdir(packs)) == before, "what the fetch brought is deleted"
    assert not (sbx.modules / "m/blob.bin").exists()
    assert (
        json.loads((sbx.modules / "m/index.json").read_text())["metadata"]["schema_version"]
        == "1.0.0"
    )

    _limits(sbx, max_fetch_mb=16)
    assert sbx.hs_tx("update").returncode == 0
    assert (sbx.modules / "m/blob.bin").read_bytes() == big.read_bytes()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a stalled git daemon)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_fetch_is_stopped_at_the_time_limit(
    tar_sandbox: Sandbox, silent_server: int
) -> None:
    sbx = tar_sandbox
    sbx.source_url = f"git://127.0.0.1:{silent_server}/updates.git"
    _limits(sbx, fetch_timeout=2)

    started = time.monotonic()
    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert "timed out after 2 s" in result.stderr
    assert time.monotonic() - started < 30
    assert json.loads(sbx.hs_tx("history", "--json").stdout)[0]["state"] == "aborted"


def test_the_clones_hooks_config_and_alternates_are_never_honoured(
    src: tuple[Sandbox, GitSource], tmp_path: Path
) -> None:
    sbx, source = src
    source.publish({"m": module_files("m", OK)})
    assert sbx.hs_tx("update").returncode == 0
    clone = sbx.state / "source"
    decoy = GitSource(tmp_path / "decoy").create()
    decoy.publish({"evil": module_files("evil", OK)})
    marker = tmp_path / "hook-ran"
    hook = clone / "hooks/reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    with (clone / "config").open("a") as f:
        f.write(f'[url "{decoy.url}"]\n\tinsteadOf = {source.url}\n')
        f.write('[filter "lfs"]\n\tsmudge = sh -c "echo SMUDGED"\n')
    (clone / "objects/info/alternates").write_text(f"{decoy.bare}/objects\n")
    files = module_files("m", OK, version="2.0.0")
    files[".gitattributes"] = "*.dat filter=lfs diff=lfs merge=lfs -text\n"
    files["data.dat"] = "the blob as committed\n"
    files[".lfsconfig"] = '[lfs]\n\turl = "http://127.0.0.1:9/"\n'
    source.publish({"m": files})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "a hook of the clone ran"
    assert not (sbx.modules / "evil").exists(), "the clone's config redirected the fetch"
    assert (sbx.modules / "m/data.dat").read_text() == "the blob as committed\n"
    assert not (clone / "objects/info/alternates").exists()
    config = subprocess.run(
        ["git", "config", "--file", str(clone / "config"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "insteadof" not in config.lower() and "filter." not in config
