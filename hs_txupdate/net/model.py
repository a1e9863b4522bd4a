"""The network state the guard captures, and everything that can be decided from it alone.

Pure: no netlink, no I/O. A state is a JSON-ready dict, so that the journal can
store it and `hs-tx show` print it years later:

    {"interfaces": ["eth0"],                       # the guarded interfaces
     "links": [{"name": "eth0", "index": 2, "up": true, "operstate": "UP",
                "addresses": [{"family": "inet", "address": "192.0.2.5", "prefixlen": 24,
                               "scope": "global", "flags": ["permanent"], "peer": null,
                               "broadcast": null, "label": null,
                               "valid_lft": null, "preferred_lft": null}]}],
     "routes": [{"family": "inet", "table": 254, "metric": null, "proto": 3,
                 "nexthops": [{"gateway": "192.0.2.1", "dev": "eth0", "oif": 2}]}]}

`links` holds only the guarded interfaces that exist; `routes` only their
default routes (`valid_lft` None means forever).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

NetState = dict[str, Any]
Action = dict[str, Any]

FAMILY_NAMES = {"inet": "IPv4", "inet6": "IPv6"}
MAIN_TABLE = 254
# Address flag bits (linux/if_addr.h) and the names `ip` prints for them.
ADDRESS_FLAGS = (
    (0x01, "temporary"),  # "secondary" for IPv4; see flag_names
    (0x02, "nodad"),
    (0x04, "optimistic"),
    (0x08, "dadfailed"),
    (0x10, "homeaddress"),
    (0x20, "deprecated"),
    (0x40, "tentative"),
    (0x80, "permanent"),
    (0x100, "mngtmpaddr"),
    (0x200, "noprefixroute"),
    (0x400, "autojoin"),
    (0x800, "stable-privacy"),
)
# Flags an address is re-added with; the others are states the kernel sets itself.
RESTORED_FLAGS = {
    "nodad": "nodad",
    "homeaddress": "home",
    "mngtmpaddr": "mngtmpaddr",
    "noprefixroute": "noprefixroute",
    "autojoin": "autojoin",
}
# Scopes whose addresses reach beyond the link: losing all of them cuts the box off.
_REACHING_SCOPES = ("global", "site")
STAGES = ("link", "address", "route")


def flag_names(bits: int, family: str) -> list[str]:
    """The names of the flag bits of an address, plus `dynamic` when it is not permanent."""
    names = [name for bit, name in ADDRESS_FLAGS if bits & bit]
    if family == "inet" and "temporary" in names:
        names[names.index("temporary")] = "secondary"  # same bit, other meaning for IPv4
    if "permanent" not in names:
        names.append("dynamic")
    return names


def _link_map(state: NetState) -> dict[str, dict[str, Any]]:
    return {link["name"]: link for link in state.get("links", [])}


def _reaching(addresses: Iterable[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """The addresses of `family` that reach beyond the link (rotating ones included)."""
    return [a for a in addresses if a["family"] == family and a["scope"] in _REACHING_SCOPES]


def address_text(address: dict[str, Any]) -> str:
    """`192.0.2.5/24`, or `10.0.0.1 peer 10.0.0.2/32` for a point-to-point address."""
    if address.get("peer"):
        return f"{address['address']} peer {address['peer']}/{address['prefixlen']}"
    return f"{address['address']}/{address['prefixlen']}"


def route_text(route: dict[str, Any]) -> str:
    """`default via 192.0.2.1 dev eth0`, with every nexthop of a multipath route."""
    hops = " ".join(
        (f"via {hop['gateway']} " if hop.get("gateway") else "") + f"dev {hop['dev']}"
        for hop in route["nexthops"]
    )
    table = f" table {route['table']}" if route.get("table") not in (None, MAIN_TABLE) else ""
    return f"default {hops}{table}"


def compare(before: NetState, after: NetState) -> list[str]:
    """What the network lost between two captures of the same guarded interfaces.

    Given the state captured before a run and one captured after it; returns
    one line per problem (empty: the guard holds). Problems: a guarded link
    that is gone or went down, a guarded interface without any address left
    of a family it had (a different address of that family is fine: IPv6
    temporary addresses rotate, DHCP leases renew), a lost default route.
    """
    problems: list[str] = []
    now = _link_map(after)
    for link in before.get("links", []):
        name = link["name"]
        current = now.get(name)
        if current is None:
            problems.append(f"guarded link {name} is gone")
            continue
        if link["up"] and not current["up"]:
            problems.append(f"guarded link {name} went down")
        for family in lost_families(link, current):
            had = ", ".join(address_text(a) for a in _reaching(link["addresses"], family))
            problems.append(f"{name} lost every {FAMILY_NAMES[family]} address (had {had})")
    for route in lost_routes(before, after):
        problems.append(
            f"the {FAMILY_NAMES[route['family']]} default route"
            f" {route_text(route).removeprefix('default ')} is gone"
        )
    return problems


def lost_families(link: dict[str, Any], current: dict[str, Any] | None) -> list[str]:
    """The families of which `link` had a reaching address and `current` has none."""
    addresses = current["addresses"] if current else []
    return [
        family
        for family in FAMILY_NAMES
        if _reaching(link["addresses"], family) and not _reaching(addresses, family)
    ]


def lost_routes(before: NetState, after: NetState) -> list[dict[str, Any]]:
    """The default routes of `before` with a nexthop interface that no longer carries
    a default route of the same family and table (another gateway on it is fine)."""
    carried = {
        (r["family"], r.get("table"), hop["dev"])
        for r in after.get("routes", [])
        for hop in r["nexthops"]
    }
    return [
        r
        for r in before.get("routes", [])
        if any((r["family"], r.get("table"), hop["dev"]) not in carried for hop in r["nexthops"])
    ]


def plan(before: NetState, now: NetState, stage: str) -> list[Action]:
    """The changes that put back what `now` lost of `before`, for one stage.

    Stages run in order: `link` (set guarded links up), `address` (re-add the
    addresses of a lost family, and link-local ones when none is left),
    `route` (re-add lost default routes). Nothing a run added is removed.
    Each action carries the equivalent `ip` command.
    """
    current = _link_map(now)
    actions: list[Action] = []
    if stage == "link":
        for link in before.get("links", []):
            state = current.get(link["name"])
            if link["up"] and (state is None or not state["up"]):
                actions.append({"kind": "link-up", "dev": link["name"]})
    elif stage == "address":
        for link in before.get("links", []):
            for address in missing_addresses(link, current.get(link["name"])):
                actions.append({"kind": "address-add", "dev": link["name"], "address": address})
    elif stage == "route":
        actions = [{"kind": "route-add", "route": r} for r in lost_routes(before, now)]
    else:
        raise ValueError(f"unknown restore stage {stage!r}")
    for action in actions:
        action["command"] = ip_command(action)
    return actions


def plan_all(before: NetState, now: NetState) -> list[Action]:
    """Every stage's plan against the same state: what to run by hand, in order.

    An IPv6 link-local address is left out where the link is set up first:
    the kernel makes it then.
    """
    actions = [action for stage in STAGES for action in plan(before, now, stage)]
    raised = {a["dev"] for a in actions if a["kind"] == "link-up"}
    return [a for a in actions if not (a.get("dev") in raised and _is_ipv6_link_local(a))]


def _is_ipv6_link_local(action: Action) -> bool:
    address = action.get("address")
    return address is not None and address["family"] == "inet6" and address["scope"] == "link"


def missing_addresses(link: dict[str, Any], current: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The captured addresses of `link` to re-add, given its current state (or None).

    Temporary addresses are the kernel's to make; host-scope ones never matter.
    """
    addresses = current["addresses"] if current else []
    wanted: list[dict[str, Any]] = []
    for family in lost_families(link, current):
        wanted += _reaching(link["addresses"], family)
    for family in FAMILY_NAMES:
        local = [a for a in link["addresses"] if a["family"] == family and a["scope"] == "link"]
        if local and not any(a["family"] == family and a["scope"] == "link" for a in addresses):
            wanted += local
    return [a for a in wanted if "temporary" not in a["flags"]]


def ip_command(action: Action) -> str:
    """The `ip` command that makes the same change as `action`, for a person to run."""
    kind = action["kind"]
    if kind == "link-up":
        return f"ip link set dev {action['dev']} up"
    if kind == "address-add":
        return _address_command(action["dev"], action["address"])
    if kind == "route-add":
        return _route_command(action["route"])
    raise ValueError(f"unknown network action {kind!r}")


def _address_command(dev: str, address: dict[str, Any]) -> str:
    words = ["ip", "address", "add", address_text(address), "dev", dev]
    if address.get("broadcast"):
        words += ["broadcast", address["broadcast"]]
    if address.get("label") and address["label"] != dev:
        words += ["label", address["label"]]
    if address["scope"] != "global":
        words += ["scope", str(address["scope"])]
    if address.get("valid_lft") is not None:
        preferred = address.get("preferred_lft")
        words += ["valid_lft", str(address["valid_lft"])]
        words += ["preferred_lft", "forever" if preferred is None else str(preferred)]
    words += [RESTORED_FLAGS[f] for f in address["flags"] if f in RESTORED_FLAGS]
    return " ".join(words)


def _route_command(route: dict[str, Any]) -> str:
    words = ["ip"] + (["-6"] if route["family"] == "inet6" else []) + ["route", "add", "default"]
    hops = route["nexthops"]
    if len(hops) == 1:
        words += _hop_words(hops[0])
    if route.get("metric") is not None:
        words += ["metric", str(route["metric"])]
    if route.get("table") not in (None, MAIN_TABLE):
        words += ["table", str(route["table"])]
    if len(hops) > 1:
        for hop in hops:
            words += ["nexthop", *_hop_words(hop)]
    return " ".join(words)


def _hop_words(hop: dict[str, Any]) -> list[str]:
    return (["via", hop["gateway"]] if hop.get("gateway") else []) + ["dev", hop["dev"]]


def describe(state: NetState) -> list[str]:
    """One line per guarded link and per default route, for `show` and `status`."""
    lines = []
    for link in state.get("links", []):
        addresses = ", ".join(
            address_text(a) + "".join(f" {f}" for f in a["flags"] if f in _SHOWN_FLAGS)
            for a in link["addresses"]
        )
        updown = "up" if link["up"] else "DOWN"
        lines.append(f"{link['name']} {updown}: {addresses or 'no addresses'}")
    present = {link["name"] for link in state.get("links", [])}
    for name in state.get("interfaces", []):
        if name not in present:
            lines.append(f"{name} MISSING")
    for route in state.get("routes", []):
        lines.append(f"{FAMILY_NAMES[route['family']]} {route_text(route)}")
    if not state.get("routes"):
        lines.append("no default route")
    return lines


_SHOWN_FLAGS = ("temporary", "dynamic", "tentative", "deprecated", "dadfailed")


def source_host(url: str, environ: Mapping[str, str]) -> str | None:
    """The host a git source URL is fetched from directly, or None.

    None for a local source (`file://`, a path), an unknown scheme or a git
    remote helper (`transport::address`), and an
    http(s) source that goes through a proxy set in `environ`
    (`http_proxy`, `https_proxy`, `all_proxy`, in either case, unless
    `no_proxy` names the host): then the proxy, not this host, must be reachable.
    """
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        if not host or scheme not in ("http", "https", "ssh", "git", "git+ssh", "ssh+git"):
            return None
        if scheme in ("http", "https") and _proxied(scheme, host, environ):
            return None
        return host
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", url):
        return None  # `transport::address`: a remote helper, which hs-tx cannot see into
    # scp-like `[user@]host:path`: a colon before any slash (git's own rule)
    match = re.match(r"^(?:[^@/]+@)?(\[[^\]/]+\]|[^:/\[\]]+):", url)
    return match.group(1).strip("[]") if match else None


def _proxied(scheme: str, host: str, environ: Mapping[str, str]) -> bool:
    """Whether curl (and so git) would reach `host` through a proxy."""
    names = (f"{scheme}_proxy", "all_proxy")
    if not any(environ.get(n) or environ.get(n.upper()) for n in names):
        return False
    bypass = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower() for e in bypass.split(",")):
        if entry == "*":
            return False
        entry = entry.lstrip(".")
        if entry and (host.lower() == entry or host.lower().endswith("." + entry)):
            return False
    return True
