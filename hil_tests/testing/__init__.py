"""Test support for every test folder: rig fixtures and REPL helpers (not shipped)."""
