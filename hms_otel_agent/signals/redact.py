"""Removing patient data from URLs and exception texts before they are exported.

Pure functions; the span processor applies them to every span just before it ends.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

REDACTED = "REDACTED"
_MESSAGE_REDACTED = "(message redacted)"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(: |:$)")
_KEEP_PREFIXES = ("Traceback (most recent call last):", "The above exception", "During handling of")


def redact_query(query: str, names: Collection[str]) -> str:
    """``mrn=MRN-1&limit=5`` -> ``mrn=REDACTED&limit=5`` for names in `names` (any case)."""
    if not query:
        return query
    lowered = {n.lower() for n in names}
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key.lower() in lowered for key, _ in pairs):
        return query
    return "&".join(
        f"{quote(key, safe='')}={REDACTED if key.lower() in lowered else quote(value, safe='')}"
        for key, value in pairs
    )


def redact_url(url: str, names: Collection[str]) -> str:
    """Redact identifying query values in a URL or in a request target (``/path?query``)."""
    if "?" not in url:
        return url
    parts = urlsplit(url)
    query = redact_query(parts.query, names)
    if query == parts.query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def exception_message(type_name: str) -> str:
    """What replaces an exception's message: its type only, since messages echo data."""
    return f"{type_name.rpartition('.')[2] or 'Exception'} {_MESSAGE_REDACTED}"


def scrub_stacktrace(text: str) -> str:
    """Keep the frames of a formatted traceback; drop the exception messages (they echo data,
    e.g. PostgreSQL's ``Key (mrn)=(MRN-004211) already exists``)."""
    lines = []
    for line in text.splitlines():
        if not line or line.startswith((" ", "\t")) or line.startswith(_KEEP_PREFIXES):
            lines.append(line)
            continue
        match = _EXCEPTION_LINE.match(line)
        if match:
            lines.append(f"{match.group(1)}: {_MESSAGE_REDACTED}")
        # any other line is a continuation of a message: dropped
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def scrub_status_description(description: str) -> str:
    """``IntegrityError: duplicate key ... (MRN-1)`` -> ``IntegrityError (message redacted)``."""
    head = description.split(":", 1)[0].strip()
    if head and " " not in head:
        return exception_message(head)
    return _MESSAGE_REDACTED
