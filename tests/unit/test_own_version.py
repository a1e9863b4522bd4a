"""hs-tx's own version is written once per release, in two places that must agree."""

from __future__ import annotations

import json

import hs_txupdate
from tests.helpers import REPO


def test_top_level_index_json_carries_the_package_version() -> None:
    index = json.loads((REPO / "index.json").read_text())
    assert index["metadata"]["schema_version"] == hs_txupdate.__version__
