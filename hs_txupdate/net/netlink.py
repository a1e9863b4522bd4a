"""The kernel side of the network guard, through pyroute2.

Imported only by the parent hs-tx process and only when `[net] guard` is on:
module workers must stay lean. Every netlink failure becomes a NetGuardError
with a one-line message.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from ..base.errors import ConfigError, HsTxError
from .model import (
    ADDRESS_FLAGS,
    RESTORED_FLAGS,
    STAGES,
    Action,
    NetState,
    compare,
    flag_names,
    plan,
    plan_all,
    source_host,
)

SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
_FAMILY_IDS = {name: number for number, name in FAMILIES.items()}
_FOREVER = 0xFFFFFFFF
_IFF_UP = 0x1
_RTN_UNICAST = 1
_LOCAL_TABLE = 255
_FLAG_BITS = {name: bit for bit, name in ADDRESS_FLAGS if name in RESTORED_FLAGS}
_DUMP_RETRIES = 3

# Called with an action and its status: intent, done, exists (already there) or failed.
Recorder = Callable[[Action, str], None]


class NetGuardError(HsTxError):
    """Netlink refused or failed a request; the message says which and why."""


class NoRouteError(HsTxError):
    """The kernel has no route to the source's host; nothing was changed."""


@dataclass
class RestoreResult:
    """What `restore` did: every action with its status, and the state it left."""

    actions: list[Action] = field(default_factory=list)
    state: NetState | None = None
    problems: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the re-captured state has every guarded thing back."""
        return self.state is not None and not self.problems


@contextmanager
def _netlink(doing: str) -> Iterator[IPRoute]:
    """An rtnetlink socket; a netlink or socket failure becomes a NetGuardError."""
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else os.strerror(exc.code)
        raise NetGuardError(
            f"netlink error while {doing}: {reason} (errno {exc.code})",
            "see `ip address` and `ip route`; set [net] guard = false to run without the guard",
        ) from exc
    except OSError as exc:
        raise NetGuardError(f"cannot talk to the kernel over netlink while {doing}: {exc}") from exc


# --------------------------------------------------------------------------- capture


def capture(interfaces: Sequence[str] = (), *, strict: bool = False) -> NetState:
    """Capture the guarded links, their addresses and their default routes.

    Given the guarded interface names (empty: those that carry a default
    route now) and whether a missing one is an error. Returns a JSON-ready
    state (see `model`). Raises ConfigError (exit 2) for a missing interface
    when `strict`, NetGuardError for a netlink failure.
    """
    for attempt in range(1, _DUMP_RETRIES + 1):
        try:
            with _netlink("reading the network state") as ipr:
                return _capture(ipr, interfaces, strict)
        except NetGuardError as exc:
            # a dump interrupted by a concurrent change is simply asked for again
            interrupted = isinstance(exc.__cause__, NetlinkDumpInterrupted)
            if not interrupted or attempt == _DUMP_RETRIES:
                raise
    raise AssertionError("unreachable")


def _capture(ipr: IPRoute, interfaces: Sequence[str], strict: bool) -> NetState:
    links = {msg["index"]: msg for msg in ipr.get_links()}
    names = {index: msg.get("IFLA_IFNAME") for index, msg in links.items()}
    routes = [
        _route(msg, names)
        for family in FAMILIES
        for msg in ipr.get_routes(family=family)
        if _is_default(msg)
    ]
    guarded = list(interfaces) or sorted({hop["dev"] for r in routes for hop in r["nexthops"]})
    present = {name: index for index, name in names.items() if name in guarded}
    missing = [name for name in guarded if name not in present]
    if strict and missing:
        raise ConfigError(
            f"key 'net.guard_interfaces': interface {missing[0]} does not exist",
            "name existing interfaces (ip link), or leave the list empty to guard those "
            "carrying a default route",
        )
    addresses = [_address(msg) for msg in ipr.get_addr() if msg["family"] in FAMILIES]
    return {
        "interfaces": guarded,
        "links": [
            _link(links[index], [a for i, a in addresses if i == index])
            for name, index in sorted(present.items(), key=lambda item: item[1])
        ],
        "routes": [r for r in routes if any(hop["dev"] in guarded for hop in r["nexthops"])],
    }


def _is_default(msg: Any) -> bool:
    """A unicast default route outside the local table."""
    table = msg.get("RTA_TABLE") or msg["table"]
    return bool(msg["dst_len"] == 0 and msg["type"] == _RTN_UNICAST and table != _LOCAL_TABLE)


def _route(msg: Any, names: Mapping[int, str]) -> dict[str, Any]:
    hops = [(h["oif"], h.get("RTA_GATEWAY")) for h in msg.get("RTA_MULTIPATH") or []]
    if not hops:
        hops = [(msg.get("RTA_OIF"), msg.get("RTA_GATEWAY"))]
    return {
        "family": FAMILIES[msg["family"]],
        "table": msg.get("RTA_TABLE") or msg["table"],
        "metric": msg.get("RTA_PRIORITY"),
        "proto": msg["proto"],
        "nexthops": [
            {"gateway": gateway, "dev": names.get(oif, str(oif)), "oif": oif}
            for oif, gateway in hops
        ],
    }


def _link(msg: Any, addresses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": msg.get("IFLA_IFNAME"),
        "index": msg["index"],
        "up": bool(msg["flags"] & _IFF_UP),
        "operstate": msg.get("IFLA_OPERSTATE"),
        "addresses": addresses,
    }


def _address(msg: Any) -> tuple[int, dict[str, Any]]:
    """(link index, address record) of one RTM_NEWADDR message."""
    family = FAMILIES[msg["family"]]
    local, address = msg.get("IFA_LOCAL"), msg.get("IFA_ADDRESS")
    cache = msg.get("IFA_CACHEINFO") or {}
    valid, preferred = cache.get("ifa_valid", _FOREVER), cache.get("ifa_preferred", _FOREVER)
    return msg["index"], {
        "family": family,
        "address": local or address,
        "prefixlen": msg["prefixlen"],
        "scope": SCOPES.get(msg["scope"], msg["scope"]),
        "flags": flag_names(msg.get("IFA_FLAGS") or msg["flags"], family),
        # on a point-to-point link IFA_ADDRESS is the other end
        "peer": address if local and address and address != local else None,
        "broadcast": msg.get("IFA_BROADCAST"),
        "label": msg.get("IFA_LABEL"),
        "valid_lft": None if valid == _FOREVER else valid,
        "preferred_lft": None if preferred == _FOREVER else preferred,
    }


# --------------------------------------------------------------------------- restore


def restore(before: NetState, record: Recorder | None = None) -> RestoreResult:
    """Put back what the guarded network lost since `before` was captured, then check.

    Runs the stages of `model.plan` in order (links up, addresses, default
    routes), each planned against a fresh capture, calling `record` before
    and after every change. Never removes anything. Returns every action with
    its status, the re-captured state, the problems left and, when some are,
    the `ip` commands that would fix them by hand. Raises NetGuardError only
    when the state cannot be read at all.
    """
    result = RestoreResult()
    interfaces = before["interfaces"]
    with _netlink("restoring the network") as ipr:
        for stage in STAGES:
            now = _capture(ipr, interfaces, strict=False)
            for action in plan(before, now, stage):
                _apply_recorded(ipr, action, record)
                result.actions.append(action)
    result.state = capture(interfaces)
    result.problems = compare(before, result.state)
    if result.problems:
        result.commands = [a["command"] for a in plan_all(before, result.state)]
    return result


def _apply_recorded(ipr: IPRoute, action: Action, record: Recorder | None) -> None:
    """Apply one action, recording its intent and outcome (action gets status, error)."""
    if record:
        record(action, "intent")
    try:
        _apply(ipr, action)
        action["status"] = "done"
    except NetlinkError as exc:
        action["status"] = "exists" if exc.code == 17 else "failed"  # EEXIST: already back
        action["error"] = None if exc.code == 17 else (exc.args[1] if len(exc.args) > 1 else "")
    except (LookupError, ValueError, OSError) as exc:
        action["status"], action["error"] = "failed", str(exc)
    if record:
        record(action, action["status"])


def _apply(ipr: IPRoute, action: Action) -> None:
    """Make one change with pyroute2. Raises NetlinkError, or LookupError for a lost link."""
    kind = action["kind"]
    if kind == "link-up":
        ipr.link("set", index=_index(ipr, action["dev"]), state="up")
    elif kind == "address-add":
        ipr.addr("add", **_address_args(_index(ipr, action["dev"]), action["address"]))
    elif kind == "route-add":
        ipr.route("add", **_route_args(ipr, action["route"]))
    else:
        raise ValueError(f"unknown network action {kind!r}")


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"interface {name} does not exist")
    return int(found[0])


def _address_args(index: int, address: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "index": index,
        "family": _FAMILY_IDS[address["family"]],
        "address": address["peer"] or address["address"],
        "prefixlen": address["prefixlen"],
        "scope": next((k for k, v in SCOPES.items() if v == address["scope"]), 0),
    }
    if address["peer"]:
        args["local"] = address["address"]
    if address.get("broadcast"):
        args["broadcast"] = address["broadcast"]
    if address.get("label"):
        args["label"] = address["label"]
    bits = sum(_FLAG_BITS[f] for f in address["flags"] if f in RESTORED_FLAGS)
    if bits:
        args["flags"] = bits
    if address.get("valid_lft") is not None:
        args["valid_lft"] = address["valid_lft"]
        preferred = address.get("preferred_lft")
        args["preferred_lft"] = address["valid_lft"] if preferred is None else preferred
    return args


def _route_args(ipr: IPRoute, route: dict[str, Any]) -> dict[str, Any]:
    family = _FAMILY_IDS[route["family"]]
    args: dict[str, Any] = {
        "family": family,
        "dst": "0.0.0.0/0" if family == socket.AF_INET else "::/0",
        "table": route["table"],
        "proto": route["proto"],
    }
    if route.get("metric") is not None:
        args["priority"] = route["metric"]
    hops = [
        {"oif": _index(ipr, hop["dev"]), **({"gateway": hop["gateway"]} if hop["gateway"] else {})}
        for hop in route["nexthops"]
    ]
    if len(hops) == 1:
        args.update(hops[0])
    else:
        args["multipath"] = hops
    return args


# --------------------------------------------------------------------------- preflight


def preflight(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Ask the kernel for a route to the host of a source that is fetched directly.

    Given the source URL and the environment (proxies). Returns None when the
    source is local or proxied (nothing to check), else the route found
    (`host`, `address`, `dev`, `gateway`). Raises NoRouteError when the host
    cannot be resolved or no address of it has a route.
    """
    host = source_host(url, os.environ if environ is None else environ)
    if host is None:
        return None
    addresses = _resolve(host, url)
    reasons = []
    with _netlink("looking up the route to the source") as ipr:
        for address in addresses:
            try:
                found = ipr.route("get", dst=address)
            except NetlinkError as exc:
                reasons.append(exc.args[1] if len(exc.args) > 1 else os.strerror(exc.code))
                continue
            names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.get_links()}
            msg = found[0]
            dev = names.get(msg.get("RTA_OIF"))
            return {"host": host, "address": address, "dev": dev, "gateway": msg.get("RTA_GATEWAY")}
    raise NoRouteError(
        f"no route to {host} ({', '.join(addresses)}), the host of the source {url}"
        f" ({(reasons or ['no address'])[0].lower()}); nothing was changed",
        "check the default route (ip route), or set a proxy (https_proxy) if the source is "
        "reached through one",
    )


def _resolve(host: str, url: str) -> list[str]:
    """The distinct addresses `host` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NoRouteError(
            f"cannot resolve {host}, the host of the source {url}: {exc}; nothing was changed",
            "check the name, /etc/resolv.conf and the route to the name server",
        ) from exc
    out: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in FAMILIES and sockaddr[0] not in out:
            out.append(str(sockaddr[0]))
    return out
