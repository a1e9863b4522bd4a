"""The network guard in real network namespaces: hs-tx runs inside a namespace whose
guarded interface is one end of a veth pair, and modules break its network.

Every namespace is deleted when its test ends, also when the test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import GitSource, Sandbox, module_files, need, sh
from tests.integration.test_self_update import (  # noqa: F401 - fixtures
    copy_project,
    source,
    venv,
)

RUN_TIMEOUT = 120
IPV4 = "10.9.0.2/24"
IPV6 = "fd00:9::2/64"
GATEWAY4 = "10.9.0.1"
GATEWAY6 = "fd00:9::1"
_names = itertools.count()
# Appended to the new hs-tx of a self-update: it breaks the network as it resumes.
BREAK_ON_RESUME = """
import os as _os, subprocess as _sp
if _os.environ.get("HS_TX_RESUME"):
    _sp.run(["ip", "route", "del", "default"], check=True)
"""


@dataclass
class NetNs:
    """A network namespace with lo and a veth pair: veth0 (guarded, with addresses and
    the default routes) and its peer veth1, both inside the namespace."""

    name: str

    @property
    def enter(self) -> list[str]:
        """A command prefix that runs inside the namespace. nsenter only joins it;
        `ip netns exec` / `ip -n` also remount / and /sys, which fails where / is
        not a mount point (a chroot)."""
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.enter, "ip", *args, check=check)

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        return json.loads(self.ip("-j", *args).stdout or "[]")

    def setup(self, default_routes: bool = True) -> NetNs:
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        self.ip("address", "add", IPV4, "dev", "veth0")
        self.ip("address", "add", IPV6, "dev", "veth0", "nodad")
        self.ip("link", "set", "veth0", "up")
        self.ip("link", "set", "veth1", "up")
        if default_routes:
            self.ip("route", "add", "default", "via", GATEWAY4, "dev", "veth0")
            self.ip("-6", "route", "add", "default", "via", GATEWAY6, "dev", "veth0")
        return self

    def teardown(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    def default_routes(self) -> set[tuple[str, str, str]]:
        """(family, gateway, dev) of every default route in the main tables."""
        out = set()
        for family in ("-4", "-6"):
            for route in self.ip_json(family, "route", "show", "default"):
                out.add((family, route.get("gateway", ""), route.get("dev", "")))
        return out

    def veth0(self) -> dict[str, Any] | None:
        """`ip -j address show dev veth0`, or None when the link is gone."""
        found = self.ip("-j", "address", "show", "dev", "veth0", check=False)
        return json.loads(found.stdout)[0] if found.returncode == 0 else None

    def addresses(self) -> set[str]:
        link = self.veth0() or {"addr_info": []}
        return {
            f"{a['local']}/{a['prefixlen']}"
            for a in link["addr_info"]
            if a.get("scope") == "global"
        }

    def is_up(self) -> bool:
        link = self.veth0()
        return link is not None and "UP" in link["flags"]

    def assert_as_set_up(self) -> None:
        assert self.is_up()
        assert self.addresses() == {IPV4, IPV6}
        assert self.default_routes() == {("-4", GATEWAY4, "veth0"), ("-6", GATEWAY6, "veth0")}


def _require_netns() -> None:
    need(os.geteuid() == 0, "needs root for network namespaces")
    need(shutil.which("ip") is not None, "needs iproute2 (ip)")


@pytest.fixture
def make_netns() -> Iterator[Callable[..., NetNs]]:
    """Factory: make_netns(default_routes=True) -> a set-up NetNs, always deleted."""
    made: list[NetNs] = []

    def make(default_routes: bool = True) -> NetNs:
        _require_netns()
        ns = NetNs(f"hstx-{os.getpid()}-{next(_names)}")
        made.append(ns)
        return ns.setup(default_routes)

    yield make
    for ns in made:
        ns.teardown()


@pytest.fixture
def netns(make_netns: Callable[..., NetNs]) -> NetNs:
    return make_netns()


def guard(sbx: Sandbox, on: bool = True, interfaces: list[str] | None = None) -> None:
    """Rewrite the sandbox config's [net] section."""
    text = sbx.config.read_text()
    line = f"guard = {'true' if on else 'false'}"
    if interfaces is not None:
        line += f"\nguard_interfaces = {json.dumps(interfaces)}"
    sbx.config.write_text(text.replace("guard = false", line, 1))


def hs_tx(ns: NetNs, sbx: Sandbox, *args: str) -> subprocess.CompletedProcess:
    """Run the real `hs-tx` inside the namespace, without any proxy settings."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    command = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), *args]
    return subprocess.run(
        [*ns.enter, *command],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
    )


def show(ns: NetNs, sbx: Sandbox, tx_id: int = 1) -> dict[str, Any]:
    result = hs_tx(ns, sbx, "show", str(tx_id), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def breaking_module(sbx: Sandbox, commands: list[list[str]], succeed: bool = True) -> Path:
    """A module that rewrites data/conf.txt, then runs `commands` (ip ...) and reports
    `succeed`. Returns the data file, which holds "old" before the run."""
    conf = sbx.data / "conf.txt"
    conf.write_text("old\n")
    sbx.module(
        "netbreaker",
        f"""
        import subprocess

        def main(args):
            with open({str(conf)!r}, "w") as f:
                f.write("new\\n")
            for argv in {commands!r}:
                subprocess.run(argv, check=True)
            return {{"success": {succeed!r}}}
        """,
        backup_paths=[sbx.data],
    )
    return conf


def restore_actions(tx: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["status"], a["command"]) for a in tx["net"]["actions"]]


# ------------------------------------------------------------------ rolled back, restored


def test_deleted_default_route_is_rolled_back_and_restored(
    netns: NetNs, tar_sandbox: Sandbox
) -> None:
    sbx = tar_sandbox
    guard(sbx)
    conf = breaking_module(sbx, [["ip", "route", "del", "default"]])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 1, result.stderr
    assert "default route via 10.9.0.1 dev veth0 is gone" in result.stderr
    assert conf.read_text() == "old\n"
    netns.assert_as_set_up()
    tx = show(netns, sbx)
    assert tx["state"] == "rolled_back"
    net = tx["net"]
    assert net["outcome"] == "restored"
    assert net["interfaces"] == ["veth0"]
    assert net["gate"]["status"] == "failed"
    assert restore_actions(tx) == [("done", "ip route add default via 10.9.0.1 dev veth0")]
    assert [r["family"] for r in net["after"]["routes"]] == ["inet6"]
    assert len(net["restored"]["routes"]) == 2
    steps = [(e["step"], e["status"]) for e in tx["events"] if e["phase"] == "net"]
    assert steps == [
        ("capture", "done"),
        ("gate", "failed"),
        ("restore", "intent"),
        ("restore", "done"),
        ("check", "done"),
    ]
    text = hs_tx(netns, sbx, "show", "1").stdout
    assert "Network guard: restored" in text
    assert "done    ip route add default via 10.9.0.1 dev veth0" in text


def test_flushed_addresses_are_restored(netns: NetNs, tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    guard(sbx, interfaces=["veth0"])
    conf = breaking_module(sbx, [["ip", "address", "flush", "dev", "veth0"]])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 1, result.stderr
    assert "veth0 lost every IPv4 address (had 10.9.0.2/24)" in result.stderr
    assert conf.read_text() == "old\n"
    netns.assert_as_set_up()
    tx = show(netns, sbx)
    assert tx["state"] == "rolled_back"
    assert tx["net"]["outcome"] == "restored"
    commands = [command for status, command in restore_actions(tx) if status == "done"]
    assert "ip address add 10.9.0.2/24 dev veth0" in commands
    assert "ip address add fd00:9::2/64 dev veth0 nodad" in commands
    assert "ip route add default via 10.9.0.1 dev veth0" in commands


def test_link_set_down_is_restored(netns: NetNs, tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    guard(sbx)
    conf = breaking_module(sbx, [["ip", "link", "set", "veth0", "down"]])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 1, result.stderr
    assert "guarded link veth0 went down" in result.stderr
    assert conf.read_text() == "old\n"
    netns.assert_as_set_up()
    tx = show(netns, sbx)
    assert tx["net"]["outcome"] == "restored"
    assert restore_actions(tx)[0] == ("done", "ip link set dev veth0 up")


def test_failed_module_that_broke_the_network_is_restored_too(
    netns: NetNs, tar_sandbox: Sandbox
) -> None:
    sbx = tar_sandbox
    guard(sbx)
    conf = breaking_module(sbx, [["ip", "-6", "route", "del", "default"]], succeed=False)

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 1, result.stderr
    assert conf.read_text() == "old\n"
    netns.assert_as_set_up()
    tx = show(netns, sbx)
    assert tx["state"] == "rolled_back"
    assert tx["net"]["gate"] is None  # the module failed first
    assert restore_actions(tx) == [
        ("done", "ip -6 route add default via fd00:9::1 dev veth0 metric 1024")
    ]


# ------------------------------------------------------------------ committed, guard off


def test_healthy_update_commits_and_status_shows_the_guarded_network(
    netns: NetNs, tar_sandbox: Sandbox
) -> None:
    sbx = tar_sandbox
    guard(sbx)
    conf = breaking_module(sbx, [])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 0, result.stderr
    assert conf.read_text() == "new\n"
    tx = show(netns, sbx)
    assert tx["state"] == "committed"
    net = tx["net"]
    assert net["outcome"] == "held"
    assert net["gate"] == {"status": "done", "problems": []}
    assert net["actions"] == []
    assert net["before"]["routes"] == net["after"]["routes"]
    status = hs_tx(netns, sbx, "status", "--json")
    assert status.returncode == 0, status.stderr
    now = json.loads(status.stdout)["net"]
    assert now["guard"] is True and now["error"] is None
    assert [link["name"] for link in now["state"]["links"]] == ["veth0"]
    assert "veth0 up: 10.9.0.2/24, fd00:9::2/64" in hs_tx(netns, sbx, "status").stdout


def test_guard_off_commits_a_run_that_deletes_the_route(netns: NetNs, tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    guard(sbx, on=False)
    conf = breaking_module(sbx, [["ip", "route", "del", "default"]])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 0, result.stderr
    assert conf.read_text() == "new\n"
    assert netns.default_routes() == {("-6", GATEWAY6, "veth0")}
    tx = show(netns, sbx)
    assert tx["state"] == "committed"
    assert tx["net"]["guarded"] is False
    assert not [e for e in tx["events"] if e["phase"] == "net"]
    assert json.loads(hs_tx(netns, sbx, "status", "--json").stdout)["net"]["guard"] is False


# ------------------------------------------------------------------ preflight, bad input


def test_source_without_a_route_is_refused_before_any_change(
    make_netns: Callable[..., NetNs], tar_sandbox: Sandbox
) -> None:
    ns = make_netns(default_routes=False)
    sbx = tar_sandbox
    sbx.source_url = "https://203.0.113.7/x.git"
    sbx.write_config()
    guard(sbx)
    conf = breaking_module(sbx, [])

    result = hs_tx(ns, sbx, "update")

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert "no route to 203.0.113.7" in errors[0]
    assert "network is unreachable" in errors[0]
    assert conf.read_text() == "old\n"
    tx = show(ns, sbx)
    assert tx["state"] == "aborted"
    assert tx["modules"] == [] and tx["paths"] == []
    assert tx["net"]["preflight"]["status"] == "failed"
    assert not [e for e in tx["events"] if e["phase"] == "source"]  # never fetched


def test_source_with_a_route_passes_the_preflight(netns: NetNs, tar_sandbox: Sandbox) -> None:
    # 10.9.0.1 is given to the peer: a route exists and nothing listens, so the fetch
    # fails at once, after the preflight
    netns.ip("address", "add", "10.9.0.1/24", "dev", "veth1")
    sbx = tar_sandbox
    sbx.source_url = "https://10.9.0.1/x.git"
    sbx.write_config()
    guard(sbx)

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 1, result.stderr
    assert "no route" not in result.stderr
    assert "cannot fetch" in result.stderr
    tx = show(netns, sbx)
    assert tx["state"] == "aborted"
    assert tx["net"]["preflight"]["status"] == "done"
    assert tx["net"]["preflight"]["address"] == "10.9.0.1"


def test_guarded_interface_that_does_not_exist_is_a_config_error(
    netns: NetNs, tar_sandbox: Sandbox
) -> None:
    sbx = tar_sandbox
    guard(sbx, interfaces=["veth0", "nosuch0"])
    conf = breaking_module(sbx, [])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 2, result.stderr
    assert "net.guard_interfaces" in result.stderr and "nosuch0" in result.stderr
    assert conf.read_text() == "old\n"
    tx = show(netns, sbx)
    assert tx["state"] == "aborted" and tx["modules"] == []


def test_network_that_cannot_be_restored_is_rollback_failed_with_the_commands(
    netns: NetNs, tar_sandbox: Sandbox
) -> None:
    sbx = tar_sandbox
    guard(sbx)
    # deleting one end of a veth pair deletes both: nothing can bring veth0 back
    conf = breaking_module(sbx, [["ip", "link", "del", "veth0"]])

    result = hs_tx(netns, sbx, "update")

    assert result.returncode == 3, result.stderr
    assert conf.read_text() == "old\n"  # the files are restored all the same
    assert netns.veth0() is None
    wanted = [
        "ip link set dev veth0 up",
        "ip address add 10.9.0.2/24 dev veth0",
        "ip address add fd00:9::2/64 dev veth0 nodad",
        "ip route add default via 10.9.0.1 dev veth0",
        "ip -6 route add default via fd00:9::1 dev veth0 metric 1024",
    ]
    for command in wanted:
        assert command in result.stderr
    tx = show(netns, sbx)
    assert tx["state"] == "rollback_failed"
    assert tx["exit_code"] == 3
    assert "restore it by hand with: ip link set dev veth0 up;" in tx["error"]
    net = tx["net"]
    assert net["outcome"] == "not restored"
    assert net["check"]["status"] == "failed"
    assert [c for c in wanted if c in net["check"]["commands"]] == wanted
    assert {a["status"] for a in net["actions"]} == {"failed"}
    assert net["actions"][0]["error"] == "interface veth0 does not exist"
    text = hs_tx(netns, sbx, "show", "1").stdout
    assert "NOT RESTORED: guarded link veth0 is gone" in text
    status = hs_tx(netns, sbx, "status")
    assert status.returncode == 3
    assert "ROLLBACK FAILED" in status.stdout


# ------------------------------------------------------------------ after a self-update


def test_gate_after_a_self_update_rolls_back_to_the_old_code(
    netns: NetNs,
    venv: Path,  # noqa: F811 - fixture
    tar_sandbox: Sandbox,
    source: GitSource,  # noqa: F811 - fixture
) -> None:
    sbx = tar_sandbox
    guard(sbx)
    copy_project(source.work, "0.2.0")
    init = source.work / "hs_txupdate" / "__init__.py"
    init.write_text(init.read_text() + BREAK_ON_RESUME)
    source.publish({"app": module_files("app", "def main(a):\n    return {'success': True}\n")})
    command = [venv / "bin" / "hs-tx", "--config", sbx.config]

    result = subprocess.run(
        [*netns.enter, *map(str, command), "update"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )

    assert result.returncode == 1, result.stderr
    assert "hs-tx 0.2.0 resumed transaction 1" in result.stderr
    assert "the IPv4 default route via 10.9.0.1 dev veth0 is gone" in result.stderr
    netns.assert_as_set_up()
    version = subprocess.run([*command[:1], "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "hs-tx 0.1.0"
    assert not (sbx.modules / "app").exists(), "phase 1 was rolled back too"
    tx = show(netns, sbx)
    assert tx["state"] == "rolled_back"
    assert tx["net"]["gate"]["status"] == "failed"
    assert restore_actions(tx) == [("done", "ip route add default via 10.9.0.1 dev veth0")]
