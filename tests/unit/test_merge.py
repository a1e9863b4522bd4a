"""Local state that survives a schema update (modules/merge.py)."""

from __future__ import annotations

from hs_txupdate.modules.merge import merge_local_state


def test_incoming_wins_except_for_local_state() -> None:
    installed = {
        "metadata": {"schema_version": "1.0.0", "enabled": False, "priority": 5},
        "repo": {"branch": "mine"},
        "configuration": {
            "repository": {"branch": "local"},
            "components": {"a": {"enabled": False}},
        },
        "migrations": [{"id": "1", "has_run": True}, {"id": "gone", "has_run": True}],
    }
    incoming = {
        "metadata": {"schema_version": "1.1.0", "enabled": True, "priority": 7},
        "repo": {"branch": "main"},
        "configuration": {
            "repository": {"branch": "main"},
            "components": {"a": {"enabled": True, "x": 1}, "b": {"enabled": True}},
        },
        "migrations": [{"id": "1", "has_run": False}, {"id": "2", "has_run": False}],
    }

    merged = merge_local_state(installed, incoming)

    assert merged["metadata"] == {"schema_version": "1.1.0", "enabled": False, "priority": 7}
    assert merged["repo"] == {"branch": "mine"}
    assert merged["configuration"]["repository"] == {"branch": "local"}
    assert merged["configuration"]["components"] == {
        "a": {"enabled": False, "x": 1},
        "b": {"enabled": True},
    }
    assert merged["migrations"] == [{"id": "1", "has_run": True}, {"id": "2", "has_run": False}]
    assert incoming["migrations"][0]["has_run"] is False, "the incoming document is not modified"


def test_nothing_local_means_the_incoming_document() -> None:
    incoming = {"metadata": {"schema_version": "2.0.0"}, "config": {"x": [1, {"id": 3}]}}
    assert merge_local_state({"metadata": {}}, incoming) == incoming


def test_unhashable_ids_are_left_alone() -> None:
    installed = {"metadata": {}, "items": [{"id": {"odd": 1}, "has_run": True}]}
    incoming = {"metadata": {}, "items": [{"id": {"odd": 1}, "has_run": False}]}
    assert merge_local_state(installed, incoming)["items"][0]["has_run"] is False
