"""Run by test_servers.py under hms-otel-run: an application that starts other Python processes
(a plain subprocess, a nested hms-otel-run, a multiprocessing "spawn" child), each running one
query in a span of its own. Each process prints what `hms_otel_agent.start()` answered when the
application called it again (False: the agent had started already, once)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import psycopg
from opentelemetry import trace

from hms_otel_agent import agent


def work(role: str) -> None:
    again = agent.start()  # an application that also starts the agent in code
    print(json.dumps({"role": role, "pid": os.getpid(), "started_again": again}), flush=True)
    tracer = trace.get_tracer("spawner")
    with tracer.start_as_current_span(role), psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute(f"SELECT 1 AS {role}_query").fetchall()


def main() -> None:
    role = sys.argv[1] if len(sys.argv) > 1 else "parent"
    work(role)
    if role != "parent":
        return
    subprocess.run([sys.executable, __file__, "child"], check=True)
    launcher = shutil.which("hms-otel-run")
    assert launcher is not None
    subprocess.run([launcher, "--", sys.executable, __file__, "nested"], check=True)
    spawned = multiprocessing.get_context("spawn").Process(target=work, args=("spawned",))
    spawned.start()
    spawned.join(60)
    assert spawned.exitcode == 0


if __name__ == "__main__":
    main()
