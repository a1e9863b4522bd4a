"""Netlink failures become one-line NetGuardErrors (needs no root: nothing is changed)."""

from __future__ import annotations

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from hs_txupdate.base.errors import EXIT_FAILED
from hs_txupdate.net.netlink import NetGuardError, _netlink, preflight


def test_netlink_error_is_a_clear_one_line_error() -> None:
    with pytest.raises(NetGuardError) as caught, _netlink("reading the network state"):
        raise NetlinkError(1)
    message = str(caught.value)
    assert message.startswith(
        "netlink error while reading the network state: Operation not permitted (errno 1)"
    )
    assert "\n" not in message
    assert caught.value.exit_code == EXIT_FAILED


def test_local_and_proxied_sources_are_not_looked_up() -> None:
    assert preflight("file:///srv/updates.git", {}) is None
    assert preflight("https://git.example.org/x.git", {"https_proxy": "http://p:3128"}) is None
