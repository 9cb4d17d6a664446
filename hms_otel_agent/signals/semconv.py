"""The two generations of semantic-convention names: which one a process emits, and reading either.

``OTEL_SEMCONV_STABILITY_OPT_IN`` is read as the specification and the contrib instrumentations
define it: per signal (``database``, ``http``), the stable value emits the stable names, the
``/dup`` value both, a signal not named the old ones. The agent sets the variable to
``database,http`` when the user did not (`config.SEMCONV_DEFAULT`), so its contrib
instrumentations and its own code agree on one reading of one value.

Recorded spans come in either generation (an older agent, ``old``, another service): the
offline analyzer reads them through `stable_value`, which prefers the stable name and falls back
on the old one it replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Final


class Mode(Enum):
    OLD = "old"
    STABLE = "stable"
    DUP = "dup"

    @property
    def old(self) -> bool:
        """Whether the old names are emitted."""
        return self is not Mode.STABLE

    @property
    def stable(self) -> bool:
        """Whether the stable names are emitted."""
        return self is not Mode.OLD


def mode(value: str | None, signal: str) -> Mode:
    """The mode of `signal` (``database`` or ``http``) under the variable's `value`, as contrib's
    ``_OpenTelemetrySemanticConventionStability`` reads it (``/dup`` wins over the stable value)."""
    items = {item.strip() for item in (value or "").split(",")}
    if f"{signal}/dup" in items:
        return Mode.DUP
    if signal in items:
        return Mode.STABLE
    return Mode.OLD


# Stable name -> the old names it replaced (semantic conventions v1.26-v1.33 deprecation notes;
# the same table the collector's transform/semconv applies, tests/stack/test_semconv.py).
REPLACED: Final[Mapping[str, tuple[str, ...]]] = {
    "db.system.name": ("db.system",),
    "db.query.text": ("db.statement",),
    "db.namespace": ("db.name", "db.redis.database_index"),
    "db.operation.name": ("db.operation",),
    "db.collection.name": ("db.sql.table",),
    "server.address": ("net.peer.name",),
    "server.port": ("net.peer.port",),
    "http.request.method": ("http.method",),
    "http.response.status_code": ("http.status_code",),
    "url.full": ("http.url",),
    "url.scheme": ("http.scheme",),
    "client.address": ("net.peer.ip",),
    "code.file.path": ("code.filepath",),
    "code.line.number": ("code.lineno",),
    "code.function.name": ("code.function",),
}


def stable_value(attributes: Mapping[str, Any], name: str) -> Any:
    """The value of the stable attribute `name`, or of the old one it replaced; None if neither."""
    value = attributes.get(name)
    if value is not None:
        return value
    for old in REPLACED.get(name, ()):
        value = attributes.get(old)
        if value is not None:
            return value
    return None


def url_path(attributes: Mapping[str, Any]) -> str | None:
    """A server span's path: ``url.path``, or the path part of the old ``http.target``."""
    path = attributes.get("url.path")
    if isinstance(path, str):
        return path
    target = attributes.get("http.target")
    if isinstance(target, str):
        return target.split("?", 1)[0]
    return None


def split_host_port(address: str) -> tuple[str, int | None]:
    """``example.org:8000`` -> (``example.org``, 8000); ``[::1]:8000`` -> (``::1``, 8000); an
    address without a port (``::1`` included) -> (the address, None)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        return address, None
    if port.isdigit() and len(port) <= 5:
        return host, int(port)
    return (host if address.startswith("[") else address), None
