"""The network guard's pure side: compare, restore plans, `ip` commands, source hosts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hs_txupdate.net.model import (
    compare,
    describe,
    flag_names,
    plan,
    plan_all,
    source_host,
)


def addr(
    address: str, prefixlen: int, *, scope: str = "global", flags: list[str] | None = None
) -> dict[str, Any]:
    return {
        "family": "inet6" if ":" in address else "inet",
        "address": address,
        "prefixlen": prefixlen,
        "scope": scope,
        "flags": flags if flags is not None else ["permanent"],
        "peer": None,
        "broadcast": None,
        "label": None,
        "valid_lft": None,
        "preferred_lft": None,
    }


def route(family: str, *hops: tuple[str | None, str], metric: int | None = None) -> dict:
    return {
        "family": family,
        "table": 254,
        "metric": metric,
        "proto": 3,
        "nexthops": [{"gateway": g, "dev": d, "oif": 2} for g, d in hops],
    }


def state() -> dict[str, Any]:
    return {
        "interfaces": ["eth0"],
        "links": [
            {
                "name": "eth0",
                "index": 2,
                "up": True,
                "operstate": "UP",
                "addresses": [
                    addr("192.0.2.5", 24),
                    addr("2001:db8::5", 64, flags=["mngtmpaddr", "permanent"]),
                    addr("2001:db8::aaaa", 64, flags=["temporary", "dynamic"]),
                    addr("fe80::5", 64, scope="link"),
                ],
            }
        ],
        "routes": [
            route("inet", ("192.0.2.1", "eth0")),
            route("inet6", ("fe80::1", "eth0"), metric=1024),
        ],
    }


def link(s: dict[str, Any]) -> dict[str, Any]:
    return s["links"][0]


# ------------------------------------------------------------------ compare


def test_identical_states_hold() -> None:
    assert compare(state(), state()) == []


def test_rotating_temporary_address_and_renewed_lease_do_not_count() -> None:
    after = state()
    addresses = link(after)["addresses"]
    addresses[0] = addr("192.0.2.77", 24, flags=["dynamic"])  # a new DHCP lease
    addresses[2] = addr("2001:db8::bbbb", 64, flags=["temporary", "dynamic"])
    assert compare(state(), after) == []


def test_losing_every_address_of_a_family_fails() -> None:
    after = state()
    link(after)["addresses"] = [a for a in link(after)["addresses"] if a["family"] == "inet"]
    assert compare(state(), after) == [
        "eth0 lost every IPv6 address (had 2001:db8::5/64, 2001:db8::aaaa/64)"
    ]


def test_link_local_addresses_alone_do_not_keep_a_family() -> None:
    after = state()
    link(after)["addresses"] = [a for a in link(after)["addresses"] if a["scope"] == "link"]
    assert compare(state(), after) == [
        "eth0 lost every IPv4 address (had 192.0.2.5/24)",
        "eth0 lost every IPv6 address (had 2001:db8::5/64, 2001:db8::aaaa/64)",
    ]


def test_a_family_it_never_had_is_not_missed() -> None:
    before = state()
    link(before)["addresses"] = [addr("192.0.2.5", 24)]
    after = copy.deepcopy(before)
    assert compare(before, after) == []


def test_link_down_and_link_gone() -> None:
    after = state()
    link(after)["up"] = False
    assert compare(state(), after) == ["guarded link eth0 went down"]
    gone = {**state(), "links": []}
    assert compare(state(), gone)[0] == "guarded link eth0 is gone"


def test_a_link_that_was_down_may_stay_down() -> None:
    before = state()
    link(before)["up"] = False
    assert compare(before, copy.deepcopy(before)) == []


def test_lost_default_route_fails_but_a_new_gateway_on_the_same_link_holds() -> None:
    after = state()
    after["routes"] = after["routes"][1:]
    assert compare(state(), after) == ["the IPv4 default route via 192.0.2.1 dev eth0 is gone"]
    moved = state()
    moved["routes"][0] = route("inet", ("192.0.2.254", "eth0"))
    assert compare(state(), moved) == []


def test_multipath_route_with_a_lost_nexthop_fails() -> None:
    before = {**state(), "routes": [route("inet", ("192.0.2.1", "eth0"), ("198.51.100.1", "eth1"))]}
    after = {**state(), "routes": [route("inet", ("192.0.2.1", "eth0"))]}
    assert compare(before, after) == [
        "the IPv4 default route via 192.0.2.1 dev eth0 via 198.51.100.1 dev eth1 is gone"
    ]


# ------------------------------------------------------------------ plans and commands


def test_plan_stages_put_back_only_what_was_lost() -> None:
    now = state()
    link(now)["up"] = False
    link(now)["addresses"] = [addr("192.0.2.5", 24)]  # IPv6 gone with the link
    now["routes"] = []
    assert [a["command"] for a in plan(state(), now, "link")] == ["ip link set dev eth0 up"]
    assert [a["command"] for a in plan(state(), now, "address")] == [
        "ip address add 2001:db8::5/64 dev eth0 mngtmpaddr",  # the temporary one is the kernel's
        "ip address add fe80::5/64 dev eth0 scope link",
    ]
    assert [a["command"] for a in plan(state(), now, "route")] == [
        "ip route add default via 192.0.2.1 dev eth0",
        "ip -6 route add default via fe80::1 dev eth0 metric 1024",
    ]
    # by hand, the link-local address is left to the kernel, which makes it on link up
    assert [a["command"] for a in plan_all(state(), now)] == [
        "ip link set dev eth0 up",
        "ip address add 2001:db8::5/64 dev eth0 mngtmpaddr",
        "ip route add default via 192.0.2.1 dev eth0",
        "ip -6 route add default via fe80::1 dev eth0 metric 1024",
    ]


def test_link_local_address_is_left_alone_when_the_kernel_made_a_new_one() -> None:
    now = state()
    link(now)["addresses"][3] = addr("fe80::99", 64, scope="link")
    assert plan(state(), now, "address") == []


def test_address_command_keeps_peer_broadcast_label_and_lifetimes() -> None:
    before = state()
    address = addr("10.0.0.1", 32, flags=["dynamic"])
    address.update(peer="10.0.0.2", label="eth0:1", valid_lft=300, preferred_lft=None)
    link(before)["addresses"] = [address]
    now = copy.deepcopy(before)
    link(now)["addresses"] = []
    [action] = plan(before, now, "address")
    assert action["command"] == (
        "ip address add 10.0.0.1 peer 10.0.0.2/32 dev eth0 label eth0:1"
        " valid_lft 300 preferred_lft forever"
    )
    address.update(peer=None, label=None, broadcast="10.0.0.255", valid_lft=None)
    [action] = plan(before, now, "address")
    assert action["command"] == "ip address add 10.0.0.1/32 dev eth0 broadcast 10.0.0.255"


def test_multipath_and_table_in_the_route_command() -> None:
    before = {**state(), "routes": [route("inet", ("192.0.2.1", "eth0"), (None, "wg0"))]}
    before["routes"][0]["table"] = 100
    [action] = plan(before, {**state(), "routes": []}, "route")
    assert action["command"] == (
        "ip route add default table 100 nexthop via 192.0.2.1 dev eth0 nexthop dev wg0"
    )


def test_unknown_stage_is_a_bug() -> None:
    with pytest.raises(ValueError):
        plan(state(), state(), "neighbours")


# ------------------------------------------------------------------ describe, flags


def test_describe_names_links_addresses_routes_and_missing_interfaces() -> None:
    s = state()
    s["interfaces"] = ["eth0", "eth9"]
    lines = describe(s)
    assert lines[0].startswith("eth0 up: 192.0.2.5/24, 2001:db8::5/64, 2001:db8::aaaa/64 ")
    assert "temporary dynamic" in lines[0]
    assert lines[1:] == [
        "eth9 MISSING",
        "IPv4 default via 192.0.2.1 dev eth0",
        "IPv6 default via fe80::1 dev eth0",
    ]
    assert describe({"interfaces": [], "links": [], "routes": []}) == ["no default route"]


def test_flag_names() -> None:
    assert flag_names(0x80 | 0x02, "inet6") == ["nodad", "permanent"]
    assert flag_names(0x01, "inet6") == ["temporary", "dynamic"]
    assert flag_names(0x01 | 0x80, "inet") == ["secondary", "permanent"]


# ------------------------------------------------------------------ source hosts


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://git.example.org/updates.git", "git.example.org"),
        ("http://user:pw@192.0.2.9:8080/x.git", "192.0.2.9"),
        ("https://[2001:db8::9]/x.git", "2001:db8::9"),
        ("ssh://git@git.example.org:2222/x.git", "git.example.org"),
        ("git://git.example.org/x.git", "git.example.org"),
        ("git@git.example.org:homeserver/updates.git", "git.example.org"),
        ("git.example.org:updates.git", "git.example.org"),
        ("user@[2001:db8::9]:x.git", "2001:db8::9"),
        ("file:///srv/updates.git", None),
        ("/srv/updates.git", None),
        ("./updates.git", None),
        ("srv/a:b.git", None),
        ("ext::ssh -p 22 host %S", None),
    ],
)
def test_source_host(url: str, host: str | None) -> None:
    assert source_host(url, {}) == host


def test_proxied_sources_are_not_preflighted() -> None:
    url = "https://git.example.org/x.git"
    assert source_host(url, {"https_proxy": "http://proxy:3128"}) is None
    assert source_host(url, {"HTTPS_PROXY": "http://proxy:3128"}) is None
    assert source_host(url, {"all_proxy": "socks5://proxy"}) is None
    assert source_host(url, {"http_proxy": "http://proxy:3128"}) == "git.example.org"
    bypass = {"https_proxy": "http://proxy:3128", "no_proxy": "localhost,.example.org"}
    assert source_host(url, bypass) == "git.example.org"
    # ssh does not go through an http proxy
    assert source_host("ssh://h/x", {"https_proxy": "http://p"}) == "h"
