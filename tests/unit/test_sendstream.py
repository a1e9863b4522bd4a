"""Reading a btrfs send stream (snapshot/sendstream.py): what each command names, and
a stream that does not read as one refused with an error. The streams the kernel
writes are read in tests/integration/test_changelist.py."""

from __future__ import annotations

import errno
import io
import struct

import pytest

from hs_txupdate.snapshot.sendstream import LINK, RENAME, SNAPSHOT, UTIMES, _read

HEADER = b"btrfs-stream\0" + struct.pack("<I", 1)
PATH, PATH_TO, PATH_LINK, INO = 15, 16, 17, 3
MKFILE, SYMLINK, END = 3, 8, 21


def command(number: int, *attrs: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attrs)
    return struct.pack("<IHI", len(body), number, 0) + body


def read(data: bytes) -> list[tuple[int, str, str | None]]:
    return list(_read(io.BytesIO(data)))


def test_each_command_names_its_path_and_a_rename_or_link_its_second_path() -> None:
    stream = HEADER + b"".join(
        [
            command(SNAPSHOT, (PATH, b"probe")),
            command(MKFILE, (PATH, b"o257-7-0"), (INO, struct.pack("<Q", 257))),
            command(RENAME, (PATH, b"o257-7-0"), (PATH_TO, b"d/new\nline")),
            command(LINK, (PATH, b"d/other"), (PATH_LINK, b"d/new\nline")),
            command(SYMLINK, (PATH, b"s"), (PATH_LINK, b"../target")),
            command(UTIMES, (PATH, b"")),
            command(UTIMES, (PATH, b"bytes \xff")),
            command(END),
        ]
    )
    assert read(stream) == [
        (SNAPSHOT, "probe", None),
        (MKFILE, "o257-7-0", None),
        (RENAME, "o257-7-0", "d/new\nline"),
        (LINK, "d/other", "d/new\nline"),
        (SYMLINK, "s", "../target"),
        (UTIMES, "", None),
        (UTIMES, "bytes \udcff", None),  # as os.listdir names that byte
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"tar-stream\0\0\0\0\0\0\0",
        b"btrfs-stream\0" + struct.pack("<I", 2),  # a version hs-tx did not ask for
        HEADER + command(MKFILE, (PATH, b"a"))[:-1],  # cut inside a command
        HEADER + command(MKFILE, (PATH, b"a"))[:6],  # cut inside a command's head
        HEADER + struct.pack("<IHI", 4, MKFILE, 0) + struct.pack("<HH", PATH, 9),
    ],
)
def test_a_stream_that_does_not_read_as_one_is_refused(data: bytes) -> None:
    with pytest.raises(OSError) as caught:
        read(data)
    assert caught.value.errno == errno.EIO
    assert "does not read as one" in str(caught.value)
