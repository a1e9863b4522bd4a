"""Semantic version parsing and ordering, as module authors write schema_version."""

from __future__ import annotations

import pytest

from hs_txupdate.sync.versions import Version, VersionError

V = Version.parse


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.9.0", "1.10.0"),
        ("1.2.9", "1.2.10"),
        ("0.9.9", "1.0.0"),
        ("2.0.0", "10.0.0"),
        ("1.0.0", "1.0.1"),
        ("1.0.0", "1.1.0"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-alpha.beta", "1.0.0-beta"),
        ("1.0.0-beta", "1.0.0-beta.2"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-beta.11", "1.0.0-rc.1"),
        ("0.9.0", "1.0.0-alpha"),
        ("v1.9.0", "1.10.0"),
        ("1.9.0", "v1.10.0"),
    ],
)
def test_ordering(older: str, newer: str) -> None:
    assert V(older) < V(newer)
    assert V(newer) > V(older)
    assert V(older) != V(newer)
    assert max(V(older), V(newer)) == V(newer)


def test_semver_spec_precedence_chain_sorts() -> None:
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0",
    ]
    shuffled = chain[::2] + chain[1::2]
    assert [str(v) for v in sorted(V(s) for s in shuffled)] == chain


@pytest.mark.parametrize(
    ("a", "b"),
    [("v1.2.3", "1.2.3"), ("1.2.3+build.5", "1.2.3"), ("1.2.3+a", "1.2.3+b")],
)
def test_equal_versions(a: str, b: str) -> None:
    assert V(a) == V(b)
    assert hash(V(a)) == hash(V(b))
    assert not V(a) < V(b)
    assert not V(b) < V(a)


def test_parts() -> None:
    v = V("v1.20.3-rc.1")
    assert (v.major, v.minor, v.patch) == (1, 20, 3)
    assert v.pre == ("rc", 1)
    assert str(V("1.2.3")) == "1.2.3"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "a.b.c",
        "latest",
        "v",
        "vv1.2.3",
        "1.2.3-",
        "1.2.3+",
        "1.2.3-rc..1",
        "1.2.3-01",
        "-1.2.3",
        "1.2.x",
        "1.2.3 beta",
        "1.2.3\n4",
        "１.２.３",
        "1.1２.3",  # non-ASCII digits are not semver digits
        "1.2.3-rc.1٣",
    ],
)
def test_garbage_is_rejected(text: str) -> None:
    with pytest.raises(VersionError):
        V(text)


@pytest.mark.parametrize("value", [None, 1, 1.2, [1, 2, 3], {"v": "1.2.3"}])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(VersionError):
        V(value)


def test_version_error_is_a_value_error() -> None:
    assert issubclass(VersionError, ValueError)
