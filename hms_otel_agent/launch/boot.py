"""What the bootstrap `sitecustomize` runs in every process started under hms-otel-run."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any


def boot(bootstrap_file: str) -> None:
    try:
        from hms_otel_agent import agent

        if agent.start():
            flush_on_sigterm()
    except SystemExit as exc:  # strict mode: exit 2 before the application starts
        sys.stderr.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 2)
    except BaseException as exc:  # never stop the application from starting
        try:
            from hms_otel_agent import guard

            guard.report("agent bootstrap", exc)
        except Exception:
            pass
    _chain_next_sitecustomize(os.path.dirname(os.path.abspath(bootstrap_file)))


def _chain_next_sitecustomize(own_dir: str) -> None:
    """Run the sitecustomize this one shadows (Debian's, a virtualenv's), if any."""
    for entry in sys.path:
        directory = os.path.abspath(entry or os.getcwd())
        if directory == own_dir:
            continue
        candidate = os.path.join(directory, "sitecustomize.py")
        if os.path.isfile(candidate):
            try:
                spec = importlib.util.spec_from_file_location("_hms_otel_next_sitecustomize", candidate)
                if spec is not None and spec.loader is not None:
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
            except Exception as exc:
                from hms_otel_agent.printable import printable

                print(
                    printable(f"hms-otel: error in {candidate}: {type(exc).__name__}: {exc}"), file=sys.stderr
                )
            return


def flush_on_sigterm() -> None:
    """Flush the telemetry when SIGTERM would otherwise end the process without it.

    SIGTERM's default action ends a process at once: no atexit, so the spans still queued
    (up to OTEL_BSP_SCHEDULE_DELAY of them) were lost -- under uvicorn on every shutdown (it
    re-raises SIGTERM after its graceful shutdown), and in scripts and workers stopped with
    SIGTERM. Only where SIGTERM has its default action (an application's own handler always
    wins), the agent flushes within HMS_OTEL_SHUTDOWN_TIMEOUT_MS, from a helper thread so that a
    lock the interrupted code holds cannot block it, then ends the process by SIGTERM as before.
    """
    try:
        if os.name != "posix" or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        from hms_otel_agent import agent, config
        from hms_otel_agent.shutdown_deadline import shutdown_deadline

        timeout_s = config.load().settings.shutdown_timeout_ms / 1000.0

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            try:
                built = agent.current_pipeline()
                if built is not None:
                    # The deadline is shared with the run's other processes (shutdown_deadline.py).
                    left_s = max(0.0, shutdown_deadline(timeout_s) - time.monotonic())
                    flusher = threading.Thread(target=_shutdown, args=(built, left_s), daemon=True)
                    flusher.start()
                    flusher.join(left_s + 0.5)
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)
    except Exception as exc:
        from hms_otel_agent import guard

        guard.report("SIGTERM handler", exc)


def _shutdown(built: Any, timeout_s: float) -> None:
    try:
        built.shutdown(int(timeout_s * 1000))
    except Exception as exc:
        from hms_otel_agent import guard

        guard.report("agent shutdown", exc)
