"""The write audit's pure parts, no root needed: the watch/ignore rule, event
parsing, mount planning, and the folding and classification of changed paths."""

from __future__ import annotations

import hashlib
import struct

import pytest

from hs_txupdate.audit.events import (
    FAN_ATTRIB,
    FAN_CREATE,
    FAN_DELETE,
    FAN_MODIFY,
    FAN_MOVED_FROM,
    FAN_MOVED_TO,
    FAN_ONDIR,
    FAN_Q_OVERFLOW,
    Event,
    EventFormatError,
    parse,
)
from hs_txupdate.audit.fold import FOLD_AT, Aggregator, Change, classify, kind_of, name_key
from hs_txupdate.audit.paths import (
    Unwatchable,
    is_own,
    is_watched,
    keep,
    plan_filesystems,
    read_mounts,
    rebase,
    unaudited,
)
from hs_txupdate.audit.resolve import MarkedFs, Resolver
from hs_txupdate.audit.tracker import Tracker

MKDIR = FAN_CREATE | FAN_ONDIR
RMDIR = FAN_DELETE | FAN_ONDIR


class World:
    """A fake live filesystem for classification: the set of paths that exist."""

    def __init__(self, *paths: str) -> None:
        self.paths = set(paths)

    def exists(self, path: str) -> bool:
        return path in self.paths

    def count_below(self, path: str) -> int:
        return sum(1 for p in self.paths if p.startswith(path + "/"))


def result(agg: Aggregator, world: World) -> list[tuple[str, str, str | None, int]]:
    changes = classify(agg.export(), world.exists, world.count_below)
    return [(c.path, c.change, c.module, c.count) for c in changes]


# --- the watch/ignore rule and own names ---------------------------------------------


def test_an_ignore_only_cuts_into_the_root_it_lies_in() -> None:
    assert is_watched("/tmp/sbx/a", ["/tmp/sbx"], ["/tmp"])
    assert not is_watched("/tmp/other", ["/tmp/sbx"], ["/tmp"])
    assert not is_watched("/tmp/sbx/cache/x", ["/tmp/sbx"], ["/tmp/sbx/cache"])
    assert is_watched("/tmp/sbx/cachex", ["/tmp/sbx"], ["/tmp/sbx/cache"])
    # a nested root is watched even where an ignore of the outer root covers it
    roots = ["/var", "/var/lib/app"]
    assert is_watched("/var/lib/app/db", roots, ["/var/lib"])
    assert not is_watched("/var/lib/other", roots, ["/var/lib"])
    assert is_watched("/etc/x", ["/"], ["/proc"])
    assert not is_watched("/proc/1", ["/"], ["/proc"])


def test_own_names_are_never_kept() -> None:
    assert is_own("/srv/.hs-tx-snapshots/1/x")
    assert is_own("/srv/.hs-tx-stage-42")
    assert is_own("/srv/a/.hs-tx-tmp-9/f")
    assert not is_own("/srv/.hs-tx-other/f")
    assert not keep("/srv/.hs-tx-stage-1/f", ["/srv"], [])
    assert keep("/srv/f", ["/srv"], [])


def test_rebase() -> None:
    assert rebase("/a/b/c", "/a/b", "/x") == "/x/c"
    assert rebase("/a/b", "/a/b", "/x") == "/x"
    assert rebase("/c", "/", "/x") == "/x/c"
    assert rebase("/sub/c", "/sub", "/") == "/c"


# --- parsing -------------------------------------------------------------------------


def _record(info_type: int, fsid: bytes, handle: bytes, name: bytes | None = None) -> bytes:
    body = fsid + struct.pack("=Ii", len(handle), 1) + handle
    if name is not None:
        body += name + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)
    return struct.pack("=BBH", info_type, 0, len(body) + 4) + body


def _event(mask: int, pid: int, records: bytes) -> bytes:
    return struct.pack("=IBBHQii", 24 + len(records), 3, 0, 24, mask, -1, pid) + records


def test_parse_reads_dir_name_and_target() -> None:
    fsid = b"F" * 8
    buf = _event(MKDIR, 7, _record(2, fsid, b"dirh", b"new") + _record(1, fsid, b"kid"))
    buf += _event(FAN_MODIFY, 0, _record(2, fsid, b"dirh", b"."))
    first, second = list(parse(buf))
    assert (first.mask, first.pid, first.name) == (MKDIR, 7, "new")
    assert first.dir_key == fsid + struct.pack("=Ii", 4, 1) + b"dirh"
    assert first.obj_key == fsid + struct.pack("=Ii", 3, 1) + b"kid"
    assert (second.pid, second.name, second.obj_key) == (0, ".", None)


def test_parse_refuses_a_truncated_buffer() -> None:
    buf = _event(FAN_CREATE, 1, _record(2, b"F" * 8, b"h", b"n"))
    with pytest.raises(EventFormatError):
        list(parse(buf[:-3]))
    with pytest.raises(EventFormatError):
        list(parse(buf[:10]))


# --- planning which filesystems to mark ----------------------------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw - proc proc rw
27 1 254:0 / / rw - ext4 /dev/vda rw
40 27 0:45 / /mnt/top rw - btrfs /dev/loop0 rw
41 27 0:45 /sub /srv/data rw - btrfs /dev/loop0 rw
42 41 0:50 / /srv/data/ovl rw - overlay overlay rw
43 27 254:0 /run/netns /run/netns rw - ext4 /dev/vda rw
44 27 0:60 / /srv/my\\040disk rw - ext4 /dev/loop1 rw
45 27 0:70 / /srv/share rw - nfs4 server:/export rw
"""


def test_plan_marks_through_the_top_subvolume_and_skips_pseudo_filesystems() -> None:
    mounts = read_mounts(MOUNTINFO)
    assert mounts[-2].point == "/srv/my disk"
    plan = plan_filesystems(["/srv"], [], mounts)
    by_dev = {fs.dev: fs for fs in plan}
    assert set(by_dev) == {"254:0", "0:45", "0:60"}  # the overlay is left out
    btrfs = by_dev["0:45"]
    assert (btrfs.point, btrfs.root, btrfs.views) == ("/mnt/top", "/", [("/sub", "/srv/data")])
    view = MarkedFs(b"", -1, btrfs.point, btrfs.root, btrfs.views)
    assert view.to_view("/mnt/top/sub/a/b") == "/srv/data/a/b"
    assert view.to_view("/mnt/top/elsewhere") is None
    assert plan_filesystems(["/srv"], ["/srv/data"], mounts)[0].dev == "254:0"
    assert len(plan_filesystems(["/srv"], ["/srv/data"], mounts)) == 2


def test_network_mounts_below_a_root_are_named_as_not_audited() -> None:
    mounts = read_mounts(MOUNTINFO)
    assert unaudited(["/srv"], [], mounts) == ["/srv/share (nfs4)"]
    assert unaudited(["/srv"], ["/srv/share"], mounts) == []
    assert unaudited(["/etc"], [], mounts) == []


def test_plan_refuses_a_root_on_an_unwatchable_filesystem() -> None:
    with pytest.raises(Unwatchable):
        plan_filesystems(["/srv/data/ovl/x"], [], read_mounts(MOUNTINFO))
    with pytest.raises(Unwatchable):
        plan_filesystems(["/proc"], [], read_mounts(MOUNTINFO))


# --- classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "union", "exists", "kind"),
    [
        (FAN_CREATE, FAN_CREATE | FAN_MODIFY, True, "created"),
        (FAN_MOVED_TO, FAN_MOVED_TO, True, "created"),
        (FAN_CREATE, FAN_CREATE | FAN_DELETE, False, None),
        (FAN_DELETE, FAN_DELETE, False, "deleted"),
        (FAN_MOVED_FROM, FAN_MOVED_FROM, False, "deleted"),
        (FAN_MODIFY, FAN_MODIFY | FAN_ATTRIB, True, "modified"),
        (FAN_DELETE, FAN_DELETE | FAN_CREATE, True, "modified"),
        (FAN_ATTRIB, FAN_ATTRIB, True, "metadata"),
    ],
)
def test_kind_of(first: int, union: int, exists: bool, kind: str | None) -> None:
    assert kind_of(first, union, exists) == kind


def test_paths_classify_against_the_live_tree() -> None:
    agg = Aggregator(World().exists)
    for path, mask in [
        ("/w/new", FAN_CREATE),
        ("/w/new", FAN_MODIFY),
        ("/w/tmp", FAN_CREATE),
        ("/w/tmp", FAN_DELETE),
        ("/w/gone", FAN_DELETE),
        ("/w/edit", FAN_MODIFY),
        ("/w/mode", FAN_ATTRIB),
        ("/w/replaced", FAN_MOVED_TO),
    ]:
        agg.add(path, mask, "m1")
    agg.replaced("/w/replaced")
    world = World("/w/new", "/w/edit", "/w/mode", "/w/replaced")
    assert result(agg, world) == [
        ("/w/edit", "modified", "m1", 1),
        ("/w/gone", "deleted", "m1", 1),
        ("/w/mode", "metadata", "m1", 1),
        ("/w/new", "created", "m1", 1),
        ("/w/replaced", "modified", "m1", 1),
    ]


def test_the_first_module_keeps_a_path() -> None:
    agg = Aggregator(World().exists)
    agg.add("/w/f", FAN_MODIFY, "m1")
    agg.add("/w/f", FAN_ATTRIB, "m2")
    agg.add("/w/g", FAN_ATTRIB, None)
    assert result(agg, World("/w/f", "/w/g")) == [
        ("/w/f", "modified", "m1", 1),
        ("/w/g", "metadata", None, 1),
    ]


# --- folding -------------------------------------------------------------------------


def test_a_created_directory_stands_for_everything_below_it() -> None:
    agg = Aggregator(World().exists)
    agg.add("/w/app", MKDIR, "npm")
    for i in range(1000):
        agg.add(f"/w/app/d{i % 10}/f{i}", FAN_CREATE, "npm")
    assert list(agg.entries) == ["/w/app"]
    world = World("/w/app", *(f"/w/app/x{i}" for i in range(7)))
    assert result(agg, world) == [("/w/app", "created", "npm", 8)]


def test_many_entries_in_one_directory_fold_per_module() -> None:
    agg = Aggregator(World().exists)
    for i in range(FOLD_AT + 8):
        agg.add(f"/etc/f{i}", FAN_MODIFY, "m1")
        agg.add(f"/etc/f{i}", FAN_ATTRIB, "m1")  # the same names again: counted once
    for i in range(3):
        agg.add(f"/etc/g{i}", FAN_MODIFY, "m2")
    assert len(agg.entries) == 3  # only m2's
    world = World(
        "/etc", *(f"/etc/f{i}" for i in range(FOLD_AT + 8)), "/etc/g0", "/etc/g1", "/etc/g2"
    )
    assert result(agg, world) == [
        ("/etc", "modified", "m1", FOLD_AT + 8),
        ("/etc/g0", "modified", "m2", 1),
        ("/etc/g1", "modified", "m2", 1),
        ("/etc/g2", "modified", "m2", 1),
    ]


def test_names_that_came_and_went_do_not_cause_a_fold() -> None:
    world = World()
    agg = Aggregator(world.exists)
    for i in range(FOLD_AT * 3):  # sed -i style temp files, gone by now
        agg.add(f"/etc/sed{i}", FAN_CREATE, "m1")
        agg.add(f"/etc/sed{i}", FAN_MOVED_FROM, "m1")
    for i in range(5):
        agg.add(f"/etc/conf{i}", FAN_MODIFY, "m1")
        world.paths.add(f"/etc/conf{i}")
    assert not agg.folds
    assert [c[0] for c in result(agg, world)] == [f"/etc/conf{i}" for i in range(5)]


def test_a_renamed_directory_takes_its_entries_along() -> None:
    agg = Aggregator(World().exists)
    agg.add("/w/old/f", FAN_MODIFY, "m1")
    agg.add("/w/old/sub/g", FAN_CREATE, "m1")
    agg.add("/w/old", FAN_MOVED_FROM | FAN_ONDIR, "m1")
    agg.rename("/w/old", "/w/new")
    agg.add("/w/new", FAN_MOVED_TO | FAN_ONDIR, "m1")
    world = World("/w/new", "/w/new/f", "/w/new/sub", "/w/new/sub/g")
    assert result(agg, world) == [
        ("/w/new", "created", "m1", 1),
        ("/w/new/f", "modified", "m1", 1),
        ("/w/new/sub/g", "created", "m1", 1),
        ("/w/old", "deleted", "m1", 1),
    ]


def test_a_renamed_new_directory_stays_new() -> None:
    agg = Aggregator(World().exists)
    agg.add("/w/tmp", MKDIR, "m1")
    agg.add("/w/tmp/a", FAN_CREATE, "m1")
    agg.add("/w/tmp", FAN_MOVED_FROM | FAN_ONDIR, "m1")
    agg.rename("/w/tmp", "/w/final")
    agg.add("/w/final", FAN_MOVED_TO | FAN_ONDIR, "m1")
    agg.add("/w/final/b", FAN_CREATE, "m1")
    world = World("/w/final", "/w/final/a", "/w/final/b")
    assert result(agg, world) == [("/w/final", "created", "m1", 3)]


def test_entries_below_a_deleted_directory_fold_into_it() -> None:
    agg = Aggregator(World().exists)
    agg.add("/w/old/a", FAN_MODIFY, "m1")
    agg.add("/w/old/sub/b", FAN_DELETE, "m1")
    agg.add("/w/old/sub", RMDIR, "m1")
    agg.add("/w/old", RMDIR, "m1")
    agg.add_count("/w/old", 10, "m1")  # held events of the deleted tree
    assert result(agg, World()) == [("/w/old", "deleted", "m1", 14)]


def test_a_fold_and_an_entry_of_one_directory_merge() -> None:
    changes = classify(
        {
            "entries": [["/etc", FAN_ATTRIB | FAN_ONDIR, FAN_ATTRIB | FAN_ONDIR, "m1", 1]],
            "folds": [["/etc", "m1", list(range(40))]],
        },
        World("/etc").exists,
        World().count_below,
    )
    assert changes == [Change("/etc", "modified", "m1", 41, tuple(range(40)))]


def test_a_fold_keeps_a_stable_key_of_every_name_it_takes_in() -> None:
    """The keys survive the trip from the reader to hs-tx and into the journal: the same
    in every process (hash() is not), one per name, however many fold."""
    agg = Aggregator(World().exists, fold_at=3)
    names = [f"f{i}" for i in range(10)]
    for name in names:
        agg.add(f"/etc/{name}", FAN_MODIFY, "m1")
    (change,) = classify(
        agg.export(), World(*(f"/etc/{n}" for n in names), "/etc").exists, World().count_below
    )
    assert (change.path, change.count) == ("/etc", 10)
    assert set(change.names) == {name_key(n) for n in names}
    assert (
        name_key("f1") == int.from_bytes(hashlib.blake2b(b"f1", digest_size=8).digest(), "big") >> 1
    )


def test_an_overflow_marks_the_audit_as_lost() -> None:
    tracker = Tracker(Resolver([]), ["/w"], [], World().exists)
    tracker.handle(Event(FAN_Q_OVERFLOW, 0, None, "", None))
    assert tracker.export()["lost"] == ["the fanotify queue overflowed"]
