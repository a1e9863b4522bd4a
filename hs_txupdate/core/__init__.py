"""Transaction state machine, phases, scope, locking and errors."""
