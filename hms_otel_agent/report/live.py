"""The live signal: one log line the first time each finding is seen in this process.

Repeats of a known finding are summarized at most once a minute per finding, so a hot
endpoint with an N+1 does not flood the log.
"""

from __future__ import annotations

import logging
import threading
import time

from hms_otel_agent.printable import printable
from hms_otel_agent.signals.activity import Finding, OwnerActivity

logger = logging.getLogger("hms_otel")
REPEAT_INTERVAL_S = 60.0
MAX_TRACKED = 10_000


class LiveLog:
    def __init__(self, repeat_interval_s: float = REPEAT_INTERVAL_S) -> None:
        self.repeat_interval_s = repeat_interval_s
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # fingerprint -> (last logged, repeats since)

    def __call__(self, activity: OwnerActivity, findings: list[Finding]) -> None:
        now = time.monotonic()
        for finding in findings:
            with self._lock:
                last = self._seen.get(finding.fingerprint)
                if last is None:
                    if len(self._seen) >= MAX_TRACKED:
                        self._seen.pop(next(iter(self._seen)))
                    self._seen[finding.fingerprint] = (now, 0)
                    first = True
                else:
                    logged_at, repeats = last
                    if now - logged_at < self.repeat_interval_s:
                        self._seen[finding.fingerprint] = (logged_at, repeats + 1)
                        continue
                    self._seen[finding.fingerprint] = (now, 0)
                    first = False
            # Escaped here too: an application's own handler may print this logger's records.
            kind, hint = printable(finding.kind.replace("_", " ")), printable(finding.hint)
            if first:
                logger.warning("hms-otel: %s: %s", kind, hint)
            else:
                logger.info(
                    "hms-otel: %s seen again (%d more times since last logged): %s", kind, repeats + 1, hint
                )
