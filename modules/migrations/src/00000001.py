"""Migration 00000001 (example): the directory in HS_TX_MIGRATIONS_EXAMPLE_DIR exists.

Harmless by design: with the variable unset or empty it changes nothing and
succeeds, so the shipped example never touches a system unasked. With it set
to an absolute path, it creates that directory (mode 0755, parents as needed)
unless it is already there. Running it again changes nothing.
"""

from __future__ import annotations

import sys

import migrations_common as mc

VARIABLE = "HS_TX_MIGRATIONS_EXAMPLE_DIR"


def main() -> int:
    """Create the directory if asked to; return the exit status."""
    target = mc.env_path(VARIABLE)
    if target is None:
        mc.log(f"{VARIABLE} is not set: nothing to do")
        return 0
    if mc.ensure_dir(target, 0o755):
        mc.log(f"created {target}")
    else:
        mc.log(f"{target} already exists: nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
