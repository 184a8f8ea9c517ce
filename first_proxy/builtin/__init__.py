"""Default plugins shipped in the core. Their hooks are ``trylast`` (installed plugins win),
but for the API-key check, which runs first so that a configured key never reaches a plugin."""
