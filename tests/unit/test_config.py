"""The TOML configuration: which file is read, defaults, and every refusal (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hs_txupdate.base.errors import EXIT_USAGE, ConfigError
from hs_txupdate.core import config as config_mod
from hs_txupdate.core.config import CONFIG_ENV, Config, config_from_dict, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command line, in its own process (it sets the umask and may lock)."""
    environ = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "hs_txupdate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


@pytest.fixture
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the system-wide default at a path we control (absent until a test writes it)."""
    path = tmp_path / "etc-hs-tx" / "config.toml"
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return path


# --- which file is read ---------------------------------------------------------------
def test_defaults_when_no_file_applies(no_system_config: Path) -> None:
    cfg = load_config(None, environ={})
    assert cfg.state_dir == Path("/var/lib/hs-tx")
    assert cfg.modules_dir == Path("/usr/local/lib/hs-tx/modules")
    assert cfg.snapshot_backend == "auto"
    assert cfg.keep == 10
    assert cfg.extra_paths == ()
    assert cfg.source is None
    assert cfg.net_guard is True
    assert cfg.guard_interfaces == ()
    assert cfg.service_manager == "systemd"


def test_explicit_beats_env_beats_system_file(no_system_config: Path, tmp_path: Path) -> None:
    no_system_config.parent.mkdir()
    write(no_system_config, "[snapshot]\nkeep = 3\n")
    from_env = write(tmp_path / "env.toml", "[snapshot]\nkeep = 4\n")
    explicit = write(tmp_path / "explicit.toml", "[snapshot]\nkeep = 5\n")

    assert load_config(None, environ={}).keep == 3
    assert load_config(None, environ={CONFIG_ENV: str(from_env)}).keep == 4
    assert load_config(str(explicit), environ={CONFIG_ENV: str(from_env)}).keep == 5


def test_the_chosen_file_is_read_alone(no_system_config: Path, tmp_path: Path) -> None:
    """No merging: what the chosen file does not set comes from the defaults, not
    from another config file."""
    no_system_config.parent.mkdir()
    write(
        no_system_config,
        f"""\
        state_dir = "{tmp_path}/system-state"
        [snapshot]
        backend = "tar"
        keep = 3
        """,
    )
    from_env = write(tmp_path / "env.toml", "[net]\nguard = false\n")

    cfg = load_config(None, environ={CONFIG_ENV: str(from_env)})

    assert cfg.net_guard is False
    assert cfg.state_dir == Path("/var/lib/hs-tx")
    assert cfg.snapshot_backend == "auto"
    assert cfg.keep == 10


def test_explicit_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.toml"), environ={})
    assert info.value.exit_code == EXIT_USAGE
    assert "nope.toml" in str(info.value)


def test_full_document_is_parsed(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "state_dir": f"{tmp_path}/st//x/",
            "modules_dir": "/opt/mods",
            "snapshot": {"backend": "tar", "keep": 1},
            "scope": {"extra_paths": ["/etc/x", "/srv/y/"]},
            "source": {"url": "https://example.org/u.git", "branch": "main"},
            "net": {"guard": False, "guard_interfaces": ["eth0"]},
            "services": {"manager": "command", "restart": ["svc", "{unit}"], "is_active": []},
        }
    )
    assert isinstance(cfg, Config)
    assert cfg.state_dir == tmp_path / "st" / "x"
    assert cfg.keep == 1
    assert cfg.snapshot_backend == "tar"
    assert cfg.extra_paths == (Path("/etc/x"), Path("/srv/y"))
    assert cfg.source is not None and cfg.source.branch == "main"
    assert cfg.guard_interfaces == ("eth0",)
    assert cfg.service_restart == ("svc", "{unit}")


# --- refusals, unit level ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"statedir": "/x"}, "statedir"),
        ({"snapshot": {"keeep": 3}}, "snapshot.keeep"),
        ({"snapshot": {"keep": "3"}}, "snapshot.keep"),
        ({"snapshot": {"keep": 2.5}}, "snapshot.keep"),
        ({"snapshot": {"keep": True}}, "snapshot.keep"),
        ({"snapshot": {"keep": 0}}, "snapshot.keep"),
        ({"snapshot": {"keep": -1}}, "snapshot.keep"),
        ({"snapshot": {"backend": "zfs"}}, "snapshot.backend"),
        ({"net": {"guard": "yes"}}, "net.guard"),
        ({"net": {"guard_interfaces": "eth0"}}, "net.guard_interfaces"),
        ({"state_dir": 5}, "state_dir"),
        ({"state_dir": "var/lib/hs-tx"}, "state_dir"),
        ({"modules_dir": "./modules"}, "modules_dir"),
        ({"scope": {"extra_paths": ["/ok", "relative/path"]}}, "scope.extra_paths"),
        ({"scope": {"extra_paths": "/not/a/list"}}, "scope.extra_paths"),
        ({"services": {"manager": "upstart"}}, "services.manager"),
    ],
)
def test_bad_values_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, "test.toml")
    err = info.value
    assert err.exit_code == EXIT_USAGE
    assert f"'{key}'" in err.message or f" {key} " in f" {err.message} ", err.message
    assert "\n" not in err.message
    assert err.hint, "every refusal says how to fix it"


# --- refusals through the command: exit 2, one message, nothing written ------------------
GOOD = """\
state_dir = "{state}"
modules_dir = "{modules}"
[net]
guard = false
[services]
manager = "command"
restart = ["/bin/true", "{{unit}}"]
"""


@pytest.mark.parametrize(
    ("extra", "key", "fix"),
    [
        ("colour = 'red'\n", "colour", "remove"),
        ("[snapshot]\nkeep = 0\n", "snapshot.keep", "1"),
        ("[snapshot]\nkeep = 'ten'\n", "snapshot.keep", "1"),
        ("[scope]\nextra_paths = ['etc/app']\n", "scope.extra_paths", "/etc/app"),
    ],
)
@pytest.mark.parametrize("command", [["history"], ["update"]])
def test_cli_refuses_bad_config_and_writes_nothing(
    tmp_path: Path, extra: str, key: str, fix: str, command: list[str]
) -> None:
    state = tmp_path / "state"
    modules = tmp_path / "modules"
    modules.mkdir()
    cfg = write(tmp_path / "c.toml", GOOD.format(state=state, modules=modules))
    if extra.startswith("["):
        cfg.write_text(cfg.read_text() + extra)
    else:
        cfg.write_text(extra + cfg.read_text())

    result = run_cli("--config", str(cfg), *command)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "a refusal must say why"
    assert key in lines[0], result.stderr
    assert fix in result.stderr, result.stderr
    assert not state.exists(), "a refused configuration must not create the state dir"


def test_cli_refuses_relative_state_dir(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'state_dir = "var/lib/hs-tx"\n')
    result = run_cli("--config", str(cfg), "history", "--json")
    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert "state_dir" in result.stderr.splitlines()[0]
    assert "/var/lib/hs-tx" in result.stderr, "the fix: write it as an absolute path"


def test_cli_reads_hs_tx_config_env(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "[snapshot]\nkeep = 0\n")
    result = run_cli("history", env={CONFIG_ENV: str(cfg)})
    assert result.returncode == EXIT_USAGE
    assert "snapshot.keep" in result.stderr


def test_cli_refuses_invalid_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "keep = = 3\n")
    result = run_cli("--config", str(cfg), "history")
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert "c.toml" in result.stderr


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_cli_refuses_state_dir_writable_by_others(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    modules = tmp_path / "modules"
    modules.mkdir()
    cfg = write(tmp_path / "c.toml", GOOD.format(state=state, modules=modules))

    result = run_cli("--config", str(cfg), "update")

    assert result.returncode == EXIT_USAGE, result.stderr
    assert "state_dir" in result.stderr.splitlines()[0]
    assert f"chmod go-w {state}" in result.stderr
    assert list(state.iterdir()) == [], "nothing may be written into a refused state dir"
    assert os.stat(state).st_mode & 0o777 == mode


def test_cli_accepts_private_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    cfg = write(tmp_path / "c.toml", f'state_dir = "{state}"\n')
    result = run_cli("--config", str(cfg), "history", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_update_refuses_missing_modules_dir_and_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    modules = tmp_path / "no-such-modules"
    cfg = write(tmp_path / "c.toml", GOOD.format(state=state, modules=modules))

    result = run_cli("--config", str(cfg), "update")

    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "modules_dir" in line]
    assert errors, result.stderr
    assert str(modules) in errors[0]
    assert not state.exists(), (
        "update with a missing modules dir must be refused before the state dir "
        f"(and a journal) is created; stderr was:\n{result.stderr}"
    )
