"""Semantic versions as module authors write them in `schema_version`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$",
    re.ASCII,  # \d must not match other scripts' digits
)


class VersionError(ValueError):
    """A string that is not a semantic version."""


@total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed semantic version; ordering follows semver 2.0 (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: object) -> Version:
        """Parse `1.2.3`, `v1.2.3`, `1.2.3-rc.1`; raise VersionError for anything else."""
        if not isinstance(text, str):
            raise VersionError(f"{text!r:.80} is not a version string")
        if len(text) > 256:
            raise VersionError(f"{text[:40]!r}... is too long for a version (256 characters)")
        match = _SEMVER.match(text.strip())
        if not match:
            raise VersionError(f"{text!r} is not a semantic version (like 1.2.3)")
        major, minor, patch, pre, _build = match.groups()
        parts: tuple[int | str, ...] = ()
        if pre:
            parts = tuple(int(p) if p.isdigit() else p for p in pre.split("."))
        return cls(int(major), int(minor), int(patch), parts, text.strip())

    def _key(self) -> tuple[object, ...]:
        # a release sorts after its pre-releases; numeric identifiers before alphanumeric
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text or f"{self.major}.{self.minor}.{self.patch}"
