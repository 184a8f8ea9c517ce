"""Default plugins shipped in the core. Every hook here is ``trylast``: installed plugins win."""
