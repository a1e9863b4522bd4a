"""The fanotify event stream as plain data: the constants the audit uses and a
parser that turns a buffer read from a fanotify fd into events (no kernel calls)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# event mask bits (linux/fanotify.h)
FAN_MODIFY = 0x00000002
FAN_ATTRIB = 0x00000004
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_Q_OVERFLOW = 0x00004000
FAN_ONDIR = 0x40000000

WATCHED_MASK = (
    FAN_CREATE | FAN_DELETE | FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_ONDIR
)
APPEARED = FAN_CREATE | FAN_MOVED_TO  # a name came into being
VANISHED = FAN_DELETE | FAN_MOVED_FROM  # a name went away
DIRENT = APPEARED | VANISHED  # events about a directory entry, not its content

# info record types
_INFO_FID = 1
_INFO_DFID_NAME = 2
_INFO_DFID = 3

_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO = struct.Struct("=BBH")  # info_type, pad, len
_HANDLE_BYTES = struct.Struct("=I")
_FSID_LEN = 8
_HANDLE_HEAD = 8  # struct file_handle: handle_bytes (u32), handle_type (i32)


class EventFormatError(ValueError):
    """A buffer from the kernel does not parse as fanotify events (events are lost)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One fanotify event.

    `dir_key` and `obj_key` are file ids: the 8-byte fsid followed by a `struct
    file_handle` (usable as is by open_by_handle_at after the fsid). `dir_key` is
    the directory the event names an entry of, `name` that entry ("." for the
    directory itself), `obj_key` the object itself (the child, for entry events,
    when the group reports target fids). `pid` is 0 for a writer outside the
    reader's pid namespace.
    """

    mask: int
    pid: int
    dir_key: bytes | None
    name: str
    obj_key: bytes | None


def parse(buf: bytes) -> Iterator[Event]:
    """Given the bytes of one read() on a fanotify fd, yield its events in order.

    Raises EventFormatError on a truncated or malformed event.
    """
    view = memoryview(buf)
    offset = 0
    while offset < len(view):
        if offset + _META.size > len(view):
            raise EventFormatError("truncated event header")
        event_len, _vers, _res, meta_len, mask, _fd, pid = _META.unpack_from(view, offset)
        if event_len < meta_len or meta_len < _META.size or offset + event_len > len(view):
            raise EventFormatError(f"bad event length {event_len}")
        dir_key, name, obj_key = _parse_info(view, offset + meta_len, offset + event_len)
        yield Event(mask, pid, dir_key, name, obj_key)
        offset += event_len


def _parse_info(view: memoryview, pos: int, end: int) -> tuple[bytes | None, str, bytes | None]:
    """Given the info records of one event (view[pos:end]), return (dir_key, name,
    obj_key). Records of other types are skipped."""
    dir_key: bytes | None = None
    obj_key: bytes | None = None
    name = ""
    while pos + _INFO.size <= end:
        info_type, _pad, length = _INFO.unpack_from(view, pos)
        if length < _INFO.size or pos + length > end:
            raise EventFormatError(f"bad info record length {length}")
        if info_type in (_INFO_FID, _INFO_DFID_NAME, _INFO_DFID):
            key, key_end = _file_id(view, pos + _INFO.size, pos + length)
            if info_type == _INFO_FID:
                obj_key = key
            else:
                dir_key = key
            if info_type == _INFO_DFID_NAME:
                name = os.fsdecode(bytes(view[key_end : pos + length]).split(b"\0", 1)[0])
        pos += length
    return dir_key, name, obj_key


def _file_id(view: memoryview, pos: int, end: int) -> tuple[bytes, int]:
    """Given a record body (fsid + struct file_handle ...), return (key, end of key)."""
    head_end = pos + _FSID_LEN + _HANDLE_HEAD
    if head_end > end:
        raise EventFormatError("truncated file id")
    (handle_bytes,) = _HANDLE_BYTES.unpack_from(view, pos + _FSID_LEN)
    key_end = head_end + handle_bytes
    if key_end > end:
        raise EventFormatError("truncated file handle")
    return bytes(view[pos:key_end]), key_end


def fs_of(key: bytes) -> bytes:
    """Given a file id, return its fsid (8 bytes)."""
    return key[:_FSID_LEN]


def handle_of(key: bytes) -> bytes:
    """Given a file id, return its `struct file_handle` bytes."""
    return key[_FSID_LEN:]
