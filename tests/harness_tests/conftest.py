from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process SDK exporters built by these tests read OTEL_* variables: ignore the runner's."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
