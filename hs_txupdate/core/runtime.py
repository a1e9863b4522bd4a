"""The module runtime: the interpreter HOMESERVER modules run on.

When the source has a top-level requirements.txt, modules run on a virtualenv at
`[runtime] path` holding those requirements (from the package index, or from
`[runtime] wheels` offline). A run whose source brings other requirements than
the runtime was built from rebuilds it inside the transaction (the runtime is
then in scope, so a rollback brings the previous one back). Without a
requirements.txt no virtualenv is built and workers run on hs-tx's interpreter.
Either way the worker imports only hs-tx's light modules: on the runtime's
interpreter it finds them through a dir that holds nothing but the package.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hs_txupdate

from ..base.fsio import durable_write
from ..base.proc import run
from ..journal import Phase, Step
from ..modules.runner import Runtime
from ..sync.git import SourceState, read_blob
from .config import Config
from .context import Context

REQUIREMENTS = "requirements.txt"
MARKER = ".hs-tx-requirements.sha256"  # in the runtime: what it was built from


@dataclass(frozen=True)
class RuntimeBuild:
    """A planned (re)build of the module runtime from the source's requirements."""

    path: Path
    requirements: bytes
    digest: str


def plan_runtime(config: Config, state: SourceState | None) -> RuntimeBuild | None:
    """The build this run needs: None without a source requirements.txt, or when the
    runtime was built from the same requirements."""
    data = read_blob(state, REQUIREMENTS) if state is not None else None
    if data is None:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if built_from(config) == digest:
        return None
    return RuntimeBuild(config.runtime_path, data, digest)


def built_from(config: Config) -> str | None:
    """The digest of the requirements the runtime was built from (None: no runtime)."""
    if not (config.runtime_path / "bin" / "python").exists():
        return None
    try:
        return (config.runtime_path / MARKER).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def build_runtime(ctx: Context, tx_id: int, build: RuntimeBuild) -> None:
    """Build the runtime afresh: a virtualenv with the requirements installed, then
    the marker saying from what. Journaled; raises CommandError when pip fails."""
    detail = {"path": str(build.path), "requirements": build.digest}
    ctx.log(f"hs-tx: building the module runtime {build.path} from the source's {REQUIREMENTS}")
    with ctx.journal.step(tx_id, Phase.RUNTIME, Step.BUILD, detail):
        run([sys.executable, "-m", "venv", "--clear", str(build.path)], timeout=600)
        requirements = ctx.config.state_dir / f"runtime-{tx_id}-{REQUIREMENTS}"
        durable_write(requirements, build.requirements)
        try:
            run(_pip_install(ctx.config, build.path, requirements), timeout=1800)
        finally:
            requirements.unlink(missing_ok=True)
        durable_write(build.path / MARKER, f"{build.digest}\n".encode(), 0o644)


def _pip_install(config: Config, venv: Path, requirements: Path) -> list[str]:
    argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "--quiet"]
    argv += ["--disable-pip-version-check", "--no-cache-dir", "-r", str(requirements)]
    if config.runtime_wheels is not None:
        argv += ["--no-index", "--find-links", str(config.runtime_wheels)]
    return argv


def module_runtime(config: Config) -> Runtime:
    """What workers run on: the runtime when one was built, else hs-tx's interpreter."""
    if built_from(config) is None:
        return Runtime()
    return Runtime(str(config.runtime_path / "bin" / "python"), str(_worker_path(config)))


def _worker_path(config: Config) -> Path:
    """A dir holding only a link to the hs_txupdate package (not hs-tx's other
    packages), for PYTHONPATH of workers on the runtime's interpreter."""
    where = config.state_dir / "worker-path"
    link = where / "hs_txupdate"
    package = Path(hs_txupdate.__file__).resolve().parent
    if os.path.islink(link) and Path(os.readlink(link)) == package:
        return where
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(package)
    return where
