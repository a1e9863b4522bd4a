"""The command line: argument parsing and output only; one file per command."""
