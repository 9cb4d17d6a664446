"""URLs -> what is safe to export: templated paths, query strings without their values.

A hospital system's URLs carry patient data: ``/patients/MRN-0042/``, ``/patients/smith/``,
``?name=Smith&dob=1931-07-17``. Every check runs on the raw text and nothing is ever decoded,
so no encoding (percent-encoding, double encoding, ``+``, non-ASCII, invalid escapes) can carry
a value past it: whatever is not certainly structural is replaced.

Paths
    With the route the framework resolved: the route with placeholders
    (``patients/<int:pk>/summary/`` -> ``/patients/{pk}/summary/``). Otherwise segment by
    segment: a segment is kept when it is a literal segment of the application's routes (when
    they are known; `route_literals`) or a well-known file (``favicon.ico``, ``robots.txt``).
    When no routes are known (outbound URLs, spans of other instrumentations) nothing says
    which words are structural, so a segment is kept only when it is certainly one: a word of
    `API_WORDS` (``api``, ``v2``, ``rest``, ``search``, ...), a word the user listed
    (``HMS_OTEL_SAFE_PATH_SEGMENTS``), or one of FHIR's resource types and keywords
    (``/fhir/Patient/{id}/_history/{id}``, ``$everything``; `signals.fhir`), the segment after a
    resource type being an id whatever it looks like. Anything else becomes ``{id}``: so
    ``/api/patients/smith`` is ``/api/{id}/{id}`` (``patients`` kept once listed), as
    ``/patients/smith/`` is ``/patients/{id}/`` in a Django app, where ``smith`` is no route's
    literal.

Query strings
    Split on ``&`` and ``;``. A parameter is kept when its name is a lower-case identifier
    (``[a-z_][a-z_.-]{0,39}``: no digits, capitals, ``%``, ``+``, brackets or spaces), else it
    becomes ``REDACTED``; its value becomes ``REDACTED`` unless the name is a safe one
    (`SAFE_QUERY_PARAMS` and the configured additions, never a redacted one) and the value is
    a number of up to 6 digits or, but for `NUMERIC_QUERY_PARAMS` (``page``, ``limit``, ...),
    a lower-case word (``-created_at``; up to 8, comma-separated) or a language tag
    (``en-US``). A parameter without ``=`` (``?MRN-123``) is kept only when it is a safe name.
    The fragment is dropped; at most `MAX_PARAMETERS` parameters are shown. What passes that
    could still be a person's name: a name written in lower case used as a parameter's name
    (``?smith=1``) or as the value of a word-valued safe parameter (``?ordering=smith``).

URLs and request targets
    ``scheme://host:port`` is kept when the host is a host name or an IP address; user
    information becomes ``REDACTED@``. A target that is neither a path nor such a URL
    becomes ``REDACTED`` (``*`` stays).

Standard library only; pure; the compiled expressions are module constants.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from functools import lru_cache
from typing import Final
from urllib.parse import unquote_plus

from hms_otel_agent.signals import fhir

__all__ = [
    "API_WORDS",
    "PLACEHOLDER",
    "REDACTED",
    "SAFE_QUERY_PARAMS",
    "raw_query",
    "route_literals",
    "route_template",
    "sanitize_path",
    "sanitize_query",
    "sanitize_target",
]

PLACEHOLDER: Final = "{id}"
REDACTED: Final = "REDACTED"
MAX_SEGMENTS: Final = 64
"""Path segments looked at; any further ones become one ``{id}``."""
MAX_PARAMETERS: Final = 64
"""Query parameters looked at; any further ones become one ``REDACTED``."""

# Parameters whose values may be exported when they have a safe shape (pagination, ordering,
# output format, language). Configuration adds to this list; the redacted list takes from it.
SAFE_QUERY_PARAMS: Final = (
    "page",
    "page_size",
    "per_page",
    "limit",
    "offset",
    "ordering",
    "order_by",
    "sort",
    "sort_by",
    "order",
    "direction",
    "format",
    "lang",
    "language",
    # FHIR search result parameters (https://hl7.org/fhir/search.html)
    "_count",
    "_offset",
    "_sort",
    "_summary",
    "_format",
    "_total",
)

# Of those, the ones whose values are numbers only (the others also take a lower-case word).
NUMERIC_QUERY_PARAMS: Final = frozenset(
    ("page", "page_size", "per_page", "limit", "offset", "_count", "_offset")
)

# Files browsers, crawlers and scanners ask every site for: not patient data.
WELL_KNOWN_SEGMENTS: Final = frozenset(
    (
        "favicon.ico",
        "robots.txt",
        "sitemap.xml",
        "humans.txt",
        "ads.txt",
        "security.txt",
        ".well-known",
        "apple-touch-icon.png",
        "apple-touch-icon-precomposed.png",
        "manifest.json",
        "site.webmanifest",
    )
)

# Path words of web APIs in general, kept in URLs without a route table (outbound calls):
# short on purpose, since a word here is exported wherever it appears, and none of them is a
# name. Versions (``v1`` .. ``v99``) too; the user adds the application's own words.
API_WORDS: Final = frozenset(
    (
        *("api", "apis", "rest", "fhir", "graphql", "rpc", "search", "batch", "bulk", "query"),
        *("auth", "oauth", "oauth2", "token", "health", "healthz", "status", "ping", "version"),
    )
)
_VERSION_SEGMENT: Final = re.compile(r"v[0-9]{1,2}")
_QUERY_NAME: Final = re.compile(r"[a-z_][a-z_.-]{0,39}")
_SAFE_VALUE: Final = re.compile(
    r"-?(?:[0-9]{1,6}|[a-z][a-z_]{0,30})(?:,-?(?:[0-9]{1,6}|[a-z][a-z_]{0,30})){0,7}"
    r"|[a-z]{2,3}(?:[-_][A-Za-z]{2,4})?"
)
_NUMBER_VALUE: Final = re.compile(r"[0-9]{1,6}")
_QUERY_SEPARATORS: Final = re.compile(r"[&;]")
_LEADING_NAME: Final = re.compile(r"[a-z_]+")
_SCHEME_AUTHORITY: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,15})://([^/?#]*)")
_HOST_PORT: Final = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_LITERAL_PIECE: Final = re.compile(r"[A-Za-z0-9_.~-]{1,64}")
_ROUTE_PARAMETER: Final = re.compile(r"<(?:[^>:]+:)?([^>]+)>")  # Django's path() syntax
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_REGEX_SYNTAX: Final = frozenset("^$()[]{}*+?|\\")
_ESCAPABLE: Final = frozenset("./-_~")


# --- paths ---------------------------------------------------------------------------------------


def sanitize_path(
    path: str, literals: Container[str] | None = None, words: Container[str] = API_WORDS
) -> str:
    """``/patients/MRN-1/notes/`` -> ``/patients/{id}/notes/``.

    `literals`: the segments the application's routes spell out (`route_literals`); None when
    they are not known, and then `words` (`API_WORDS` and the configured ones) are kept."""
    segments = path.split("/", MAX_SEGMENTS)
    more = len(segments) > MAX_SEGMENTS
    if more:
        segments.pop()
    if literals is not None:
        out = [s if not s or s in literals or s in WELL_KNOWN_SEGMENTS else PLACEHOLDER for s in segments]
    else:
        out = _outbound_segments(segments, words)
    if more:
        out.append(PLACEHOLDER)
    return "/".join(out)


def _outbound_segments(segments: list[str], words: Container[str]) -> list[str]:
    """Without a route table (outbound URLs): `words`, versions, well-known files and FHIR's
    resource types and keywords are kept; the segment after a resource type or ``_history`` is
    a FHIR id and becomes ``{id}`` even when it is a listed word (``/Patient/search``)."""
    version = _VERSION_SEGMENT.fullmatch
    out: list[str] = []
    id_next = False
    for segment in segments:
        if not segment:
            out.append(segment)
        elif id_next:
            keyword = fhir.is_keyword(segment)
            out.append(segment if keyword else PLACEHOLDER)
            id_next = segment == "_history"
        elif segment in fhir.RESOURCE_TYPES:
            out.append(segment)
            id_next = True
        else:
            keep = (
                segment in words
                or segment in WELL_KNOWN_SEGMENTS
                or version(segment) is not None
                or fhir.is_keyword(segment)
            )
            out.append(segment if keep else PLACEHOLDER)
            id_next = segment == "_history"
    return out


def templated_path(
    path: str,
    route: str | None,
    literals: Container[str] | None = None,
    words: Container[str] = API_WORDS,
) -> str:
    """The path as its route spells it when the route fits the path, else `sanitize_path`.

    The route's pieces are laid over the path's last pieces (what comes before them, a script
    prefix, is sanitized); a route whose literal pieces differ from the path's is not used.
    Only the route's own text and sanitized segments are returned, whatever the input."""
    template = route_template(route) if route else None
    if template is None:
        return sanitize_path(path, literals, words)
    pieces = template.split("/")
    raw = path.split("/", MAX_SEGMENTS)
    count = len(pieces)
    if len(raw) <= count or len(raw) > MAX_SEGMENTS:
        return sanitize_path(path, literals, words)
    offset = len(raw) - count
    for index, piece in enumerate(pieces):
        if "{" not in piece and piece != raw[offset + index]:
            return sanitize_path(path, literals, words)
    if offset == 1 and not raw[0]:
        return "/" + template  # no script prefix: the usual case
    return sanitize_path("/".join(raw[:offset]), literals, words) + "/" + template


@lru_cache(maxsize=512)
def route_template(route: str) -> str | None:
    """A route with placeholders: ``patients/<int:pk>/`` -> ``patients/{pk}/``;
    ``^patients/(?P<pk>[0-9]+)/$`` -> ``patients/{pk}/``. None when a regular expression has
    syntax besides anchors, escapes and groups (the path is then sanitized segment by segment).
    Routes are the application's code, not request data: memoised."""
    template = _regex_template(route) if _REGEX_SYNTAX.intersection(route) else route
    if template is None:
        return None
    # path() syntax, also where a path() route was included under a regular expression
    return _ROUTE_PARAMETER.sub(lambda m: _placeholder(m.group(1)), template)


def _placeholder(name: str) -> str:
    return "{" + name + "}" if _IDENTIFIER.fullmatch(name) else PLACEHOLDER


def _regex_template(regex: str) -> str | None:
    out: list[str] = []
    index, end = 0, len(regex)
    while index < end:
        char = regex[index]
        if char == "^" or (char == "$" and index == end - 1):
            index += 1
        elif char == "\\":
            following = regex[index + 1 : index + 2]
            if following == "Z" and index + 2 == end:
                index += 2
            elif following in _ESCAPABLE and following:
                out.append(following)
                index += 2
            else:
                return None
        elif char == "(":
            close = _group_end(regex, index)
            if close < 0:
                return None
            group = regex[index + 1 : close]
            if group.startswith("?P<"):
                out.append(_placeholder(group[3 : group.find(">")] if ">" in group else ""))
            elif group.startswith("?"):
                return None  # non-capturing groups, lookarounds: not a value slot with certainty
            else:
                out.append(PLACEHOLDER)
            index = close + 1
        elif char in _REGEX_SYNTAX:
            return None
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _group_end(regex: str, start: int) -> int:
    """Index of the ``)`` closing the group that opens at `start`, or -1."""
    depth, index, end = 0, start, len(regex)
    in_class = False
    while index < end:
        char = regex[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return -1


def route_literals(routes: Iterable[str]) -> frozenset[str]:
    """The fixed path segments the routes spell out: ``patients/<int:pk>/summary/`` gives
    ``patients`` and ``summary``; regular-expression routes give their plain pieces."""
    found: set[str] = set()
    for route in routes:
        text = route
        if _REGEX_SYNTAX.intersection(route):
            text = route.replace("^", "").replace("\\Z", "").rstrip("$")
            for char in _ESCAPABLE:
                text = text.replace("\\" + char, char)
        for piece in text.split("/"):
            if _LITERAL_PIECE.fullmatch(piece):
                found.add(piece)
    return frozenset(found)


# --- query strings -----------------------------------------------------------------------------------


def sanitize_query(
    query: str,
    safe: Container[str],
    redacted: Container[str] = (),
    numeric: Container[str] = NUMERIC_QUERY_PARAMS,
) -> str:
    """``mrn=MRN-1&page=2&patient%5Bname%5D=x&MRN-7`` -> ``mrn=REDACTED&page=2&REDACTED&REDACTED``.

    `safe` and `redacted` hold lower-case names; the values of `numeric` ones are numbers."""
    if not query:
        return query
    parts = (
        query.split("&", MAX_PARAMETERS)
        if ";" not in query
        else _QUERY_SEPARATORS.split(query, MAX_PARAMETERS)
    )
    more = len(parts) > MAX_PARAMETERS
    if more:
        parts.pop()
    out: list[str] = []
    for part in parts:
        if not part:
            continue
        name, equals, value = part.partition("=")
        if _QUERY_NAME.fullmatch(name) is None:
            out.append(REDACTED)
        elif name not in safe or name in redacted:
            out.append(f"{name}={REDACTED}" if equals else REDACTED)
        elif not equals or not value or (_NUMBER_VALUE if name in numeric else _SAFE_VALUE).fullmatch(value):
            out.append(part)
        else:
            out.append(f"{name}={REDACTED}")
    if more:
        out.append(REDACTED)
    return "&".join(out)


def raw_query(query: str, redacted: Container[str]) -> str:
    """The query as sent, but for the values of `redacted` names (the opt-in to raw values).

    A name matches however it is encoded or decorated: ``MRN``, ``mrn%20``, ``mrn[]``,
    ``patient[name]`` (its leading word)."""
    if not query:
        return query
    out: list[str] = []
    changed = False
    for part in _QUERY_SEPARATORS.split(query):
        name, equals, _value = part.partition("=")
        normalized = unquote_plus(name).strip().lower()
        leading = _LEADING_NAME.match(normalized)
        if normalized in redacted or (leading is not None and leading.group(0) in redacted):
            out.append(f"{name}={REDACTED}" if equals else REDACTED)
            changed = True
        else:
            out.append(part)
    return "&".join(out) if changed else query


# --- whole targets and URLs --------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, str, str | None] | None:
    """(``scheme://host:port`` or ``""``, path, query or None); the fragment is dropped.
    None when `target` is neither an origin-form target (``/path?query``) nor a URL."""
    match = _SCHEME_AUTHORITY.match(target)
    if match is not None:
        scheme, authority = match.groups()
        _userinfo, at, host = authority.rpartition("@")
        if host and _HOST_PORT.fullmatch(host) is None:
            host = REDACTED
        origin = f"{scheme}://{REDACTED + '@' if at else ''}{host}"
        rest = target[match.end() :]
    elif target.startswith("/"):
        origin, rest = "", target
    else:
        return None
    rest = rest.partition("#")[0]
    path, question, query = rest.partition("?")
    return origin, path, (query if question else None)


def sanitize_target(
    target: str,
    route: str | None,
    literals: Container[str] | None,
    safe: Container[str],
    redacted: Container[str] = (),
    *,
    raw_paths: bool = False,
    raw_values: bool = False,
    words: Container[str] = API_WORDS,
) -> str:
    """A request target (``/path?query``) or a URL with its path templated and its query
    sanitized (`raw_paths` / `raw_values`: the opt-ins that keep them as sent)."""
    if target == "*":
        return target
    parts = split_target(target)
    if parts is None:
        return REDACTED
    origin, path, query = parts
    if not raw_paths:
        path = templated_path(path, route, literals, words)
    if query is None:
        return origin + path
    query = raw_query(query, redacted) if raw_values else sanitize_query(query, safe, redacted)
    return f"{origin}{path}?{query}"
