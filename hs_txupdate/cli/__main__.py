"""`python -m hs_txupdate.cli`: the same as the `hs-tx` command."""

from .main import entry

entry()
