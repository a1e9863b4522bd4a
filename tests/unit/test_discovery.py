"""Module discovery: HOMESERVER-style index.json in both its dialects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hs_txupdate.base.errors import EXIT_USAGE, ModuleDefinitionError
from hs_txupdate.modules.discovery import (
    DEFAULT_PRIORITY,
    DEFAULT_TIMEOUT,
    discover,
    load_module,
)


def make(root: Path, name: str, index: Any) -> Path:
    path = root / name
    path.mkdir(parents=True)
    text = index if isinstance(index, str) else json.dumps(index)
    (path / "index.json").write_text(text)
    (path / "index.py").write_text("def main(args):\n    return {'success': True}\n")
    return path


def meta(**extra: Any) -> dict[str, Any]:
    return {"schema_version": "1.0.0", "enabled": True, **extra}


def test_configuration_section(tmp_path: Path) -> None:
    make(
        tmp_path,
        "web",
        {
            "metadata": meta(service_name="nginx"),
            "configuration": {"backup_paths": ["/etc/nginx/", "/var/lib/nginx"]},
        },
    )
    [module] = discover(tmp_path)
    assert module.name == "web"
    assert module.path == tmp_path / "web"
    assert module.enabled
    assert module.backup_paths == (Path("/etc/nginx"), Path("/var/lib/nginx"))
    assert module.service_name == "nginx"


def test_config_is_accepted_instead_of_configuration(tmp_path: Path) -> None:
    make(
        tmp_path,
        "legacy",
        {
            "metadata": meta(),
            "config": {"backup_paths": ["/etc/legacy/"], "service_name": "legacyd"},
        },
    )
    module = load_module(tmp_path / "legacy")
    assert module.backup_paths == (Path("/etc/legacy"),)
    assert module.service_name == "legacyd"


def test_service_name_in_metadata(tmp_path: Path) -> None:
    make(tmp_path, "m", {"metadata": meta(service_name="md"), "config": {}})
    assert load_module(tmp_path / "m").service_name == "md"


def test_service_name_in_configuration(tmp_path: Path) -> None:
    make(tmp_path, "m", {"metadata": meta(), "configuration": {"service_name": "cd"}})
    assert load_module(tmp_path / "m").service_name == "cd"


def test_no_service_name(tmp_path: Path) -> None:
    make(tmp_path, "m", {"metadata": meta()})
    module = load_module(tmp_path / "m")
    assert module.service_name is None
    assert module.backup_paths == ()


def test_defaults_priority_100_timeout_600(tmp_path: Path) -> None:
    make(tmp_path, "m", {"metadata": meta(), "configuration": {}})
    module = load_module(tmp_path / "m")
    assert DEFAULT_PRIORITY == 100
    assert DEFAULT_TIMEOUT == 600
    assert module.priority == 100
    assert module.timeout == 600


def test_explicit_priority_and_timeout(tmp_path: Path) -> None:
    make(tmp_path, "m", {"metadata": meta(priority=5, timeout=30.5)})
    module = load_module(tmp_path / "m")
    assert module.priority == 5
    assert module.timeout == 30.5


def test_run_order_is_priority_then_name(tmp_path: Path) -> None:
    make(tmp_path, "zeta", {"metadata": meta(priority=10)})
    make(tmp_path, "alpha", {"metadata": meta()})
    make(tmp_path, "beta", {"metadata": meta(priority=10)})
    make(tmp_path, "early", {"metadata": meta(priority=1)})
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "README.md").write_text("not a module")
    assert [m.name for m in discover(tmp_path)] == ["early", "beta", "zeta", "alpha"]


def test_disabled_module_is_listed_but_not_validated(tmp_path: Path) -> None:
    make(tmp_path, "off", {"metadata": {"enabled": False, "schema_version": "garbage"}})
    [module] = discover(tmp_path)
    assert not module.enabled
    assert module.backup_paths == ()


@pytest.mark.parametrize(
    ("index", "field"),
    [
        ("{not json", "index.json"),
        ([], "top level"),
        ({"configuration": {}}, "metadata"),
        ({"metadata": meta(schema_version="latest")}, "schema_version"),
        ({"metadata": meta(priority="high")}, "priority"),
        ({"metadata": meta(timeout=0)}, "timeout"),
        ({"metadata": meta(timeout=True)}, "timeout"),
        ({"metadata": meta(enabled="yes")}, "enabled"),
        ({"metadata": meta(), "configuration": {"backup_paths": ["etc/x"]}}, "backup_paths"),
        ({"metadata": meta(), "configuration": {"backup_paths": ["/"]}}, "backup_paths"),
        ({"metadata": meta(), "configuration": {"backup_paths": ["/a/../b"]}}, "backup_paths"),
        ({"metadata": meta(), "configuration": {"backup_paths": "/etc/x"}}, "backup_paths"),
        ({"metadata": meta(), "config": {"backup_paths": [3]}}, "backup_paths"),
        ({"metadata": meta(), "config": []}, "config"),
    ],
)
def test_malformed_definitions_are_refused(tmp_path: Path, index: Any, field: str) -> None:
    make(tmp_path, "bad", index)
    with pytest.raises(ModuleDefinitionError) as info:
        discover(tmp_path)
    assert info.value.exit_code == EXIT_USAGE
    assert "bad" in str(info.value)
    assert field in str(info.value)


def test_missing_index_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModuleDefinitionError, match=r"index\.json"):
        discover(tmp_path)
