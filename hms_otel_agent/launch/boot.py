"""What the bootstrap `sitecustomize` runs in every process started under hms-otel-run."""

from __future__ import annotations

import importlib.util
import os
import sys


def boot(bootstrap_file: str) -> None:
    try:
        from hms_otel_agent import agent

        agent.start()
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
                print(f"hms-otel: error in {candidate}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
