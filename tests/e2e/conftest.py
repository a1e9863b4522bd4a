"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.helpers import GitSource, Sandbox


@pytest.fixture
def src(tar_sandbox: Sandbox) -> tuple[Sandbox, GitSource]:
    """A sandbox whose [source] is a fresh local bare repository."""
    source = GitSource(tar_sandbox.root / "upstream").create()
    tar_sandbox.source_url = source.url
    tar_sandbox.write_config()
    return tar_sandbox, source
