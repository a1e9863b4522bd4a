"""btrfs's own list of what changed between two read-only snapshots of a subvolume,
read in process: the send ioctl (snapshot.subvol.send_without_data) writes its
stream of operations into a memory file (never to disk, which may be full when a
rollback needs this), read back a command at a time. No `btrfs` process, no text
dump to parse, no thread (the write audit allows none).

The stream (version 1, which the kernel writes when no version is asked for): a
header (b"btrfs-stream\\0", le32 version), then commands, each a le32 length of its
attributes, a le16 command number and a le32 checksum, then its attributes, each
a le16 type, a le16 length and the value (linux/fs/btrfs/send.h).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .subvol import send_without_data

# command numbers (enum btrfs_send_cmd) hs-tx tells apart; any other names one path
SNAPSHOT, RENAME, LINK, UTIMES = 2, 9, 10, 20
_PATH, _PATH_TO, _PATH_LINK = 15, 16, 17  # attribute types (enum btrfs_send_attr)
_MAGIC = b"btrfs-stream\0"
_HEAD = len(_MAGIC) + 4
_COMMAND_HEAD = 10


Operation = tuple[int, str, "str | None"]


def operations(parent: Path, later: Path) -> Iterator[Operation]:
    """Given two read-only snapshots of one subvolume (their top directories), yield
    (command number, path, second path or None) of each operation of the send stream
    that turns `parent` into `later`, without file data. Paths are relative to the
    subvolume's top ('' for the top); the second path is a rename's new name, a
    link's existing name or a symlink's target. Raises OSError (the ioctl's, or EIO
    for a stream that does not read as one)."""
    with open(os.memfd_create("hs-tx-send", os.MFD_CLOEXEC), "rb") as out:
        send_without_data(parent, later, out.fileno())  # all of it, before it is read
        out.seek(0)
        yield from _read(out)


def _read(stream: BinaryIO) -> Iterator[Operation]:
    head = stream.read(_HEAD)
    if head[: len(_MAGIC)] != _MAGIC or int.from_bytes(head[len(_MAGIC) :], "little") != 1:
        raise _malformed(f"it starts {head[:32]!r}")
    while command := stream.read(_COMMAND_HEAD):
        if len(command) < _COMMAND_HEAD:
            raise _malformed("it ends inside a command")
        size = int.from_bytes(command[:4], "little")
        body = stream.read(size)
        if len(body) < size:
            raise _malformed("it ends inside a command")
        attrs = _attributes(body)
        path = attrs.get(_PATH)
        if path is not None:
            second = attrs.get(_PATH_TO, attrs.get(_PATH_LINK))
            dest = None if second is None else os.fsdecode(second)
            yield int.from_bytes(command[4:6], "little"), os.fsdecode(path), dest


def _attributes(body: bytes) -> dict[int, bytes]:
    """The attributes of one command, by type."""
    found, at = {}, 0
    while at < len(body):
        kind = int.from_bytes(body[at : at + 2], "little")
        size = int.from_bytes(body[at + 2 : at + 4], "little")
        if at + 4 + size > len(body):
            raise _malformed("an attribute runs past its command")
        found[kind] = body[at + 4 : at + 4 + size]
        at += 4 + size
    return found


def _malformed(why: str) -> OSError:
    return OSError(errno.EIO, f"the btrfs send stream does not read as one: {why}")
