"""Shared fixtures: a known hashing salt, and no salt leaking in from the developer's environment."""

import pytest

from persona.workspace import SALT_VAR


@pytest.fixture(autouse=True)
def _no_ambient_salt(monkeypatch):
    monkeypatch.delenv(SALT_VAR, raising=False)


@pytest.fixture
def salt(monkeypatch) -> str:
    """Set $PERSONA_SALT for the test (workspaces written in tests have no secrets.env)."""
    monkeypatch.setenv(SALT_VAR, "test-salt")
    return "test-salt"
