"""Git source sync and version comparison."""
