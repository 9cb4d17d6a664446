"""What an HTTP span may export: URLs, the user agent and captured headers, by default without
patient data (pure; the span processor applies `HttpPrivacy.changes`, the Django request hook
`HttpPrivacy.target` for the duration metric).

=============================== ===================================================================
attribute                       by default
=============================== ===================================================================
``http.target``, ``url.path``,  path templated, query values ``REDACTED`` (`signals.urls`);
``http.url``, ``url.full``,     ``HMS_OTEL_CAPTURE_URL_PATHS`` / ``HMS_OTEL_CAPTURE_QUERY_VALUES``
``url.query``, the span name    keep them as sent (the names in the redacted list stay redacted)
``http.user_agent``,            dropped; ``user_agent.name``, ``user_agent.version`` (major) and
``user_agent.original``         ``user_agent.os.name`` from a fixed vocabulary instead
                                (``HMS_OTEL_CAPTURE_USER_AGENT`` keeps the header)
``client.address``,             dropped (an IP address identifies a patient);
``net.peer.ip``                 ``HMS_OTEL_CAPTURE_CLIENT_ADDRESS`` keeps them
``http.request.header.*``,      only when the user turned on the contrib's header capture:
``http.response.header.*``      values ``REDACTED`` unless the header is a safe one
                                (`SAFE_HEADERS`, ``HMS_OTEL_SAFE_HEADERS``; URLs in them
                                sanitized, user agents reduced to their family);
                                ``HMS_OTEL_CAPTURE_HEADER_VALUES`` keeps values as captured.
                                Credentials (`ALWAYS_REDACTED_HEADERS`) and
                                ``HMS_OTEL_REDACT_HEADERS`` are always ``REDACTED``. A header
                                whose name nobody wrote down (matched by a pattern such as
                                ``x-.*``, named by the client: ``X-Quillfeather``) is dropped:
                                names must be safe, redacted or listed as such in the capture
                                variables (`named_headers`).
=============================== ===================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from hms_otel_agent.signals import urls, user_agent
from hms_otel_agent.signals.urls import REDACTED

if TYPE_CHECKING:
    from hms_otel_agent.config import Settings

__all__ = ["ALWAYS_REDACTED_HEADERS", "SAFE_HEADERS", "HttpPrivacy", "header_key", "named_headers"]

# Query parameters whose values are redacted even with HMS_OTEL_CAPTURE_QUERY_VALUES=true
# (and never safe); HMS_OTEL_REDACT_QUERY_PARAMS adds to them.
REDACTED_QUERY_PARAMS: Final = (
    "q",
    "query",
    "search",
    "name",
    "fullname",
    "full_name",
    "given_name",
    "family_name",
    "first_name",
    "last_name",
    "patient_name",
    "mrn",
    "medical_record_number",
    "patient",
    "patient_id",
    "ssn",
    "social",
    "national_id",
    "dob",
    "date_of_birth",
    "birth_date",
    "birthdate",
    "email",
    "mail",
    "phone",
    "tel",
    "address",
    "visit_reason",
    "token",
    "code",
    "password",
    "api_key",
    "key",
    "secret",
    "sig",
    "signature",
)

# Header names as attribute keys spell them: lower case, "-" -> "_".
ALWAYS_REDACTED_HEADERS: Final = frozenset(
    (
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "x_api_key",
        "x_auth_token",
        "x_csrftoken",
        "x_csrf_token",
        "x_xsrf_token",
        "x_amz_security_token",
    )
)
_URL_HEADERS: Final = frozenset(("referer", "origin", "location", "content_location"))
SAFE_HEADERS: Final = frozenset(
    (
        "accept",
        "accept_encoding",
        "accept_language",
        "age",
        "allow",
        "cache_control",
        "connection",
        "content_encoding",
        "content_language",
        "content_length",
        "content_type",
        "date",
        "host",
        "pragma",
        "referrer_policy",
        "server",
        "strict_transport_security",
        "traceparent",
        "user_agent",
        "vary",
        "x_content_type_options",
        "x_correlation_id",
        "x_forwarded_proto",
        "x_frame_options",
        "x_request_id",
        *_URL_HEADERS,
    )
)
_REQUEST_HEADER: Final = "http.request.header."
_RESPONSE_HEADER: Final = "http.response.header."
_HEADER_PREFIXES: Final = (_REQUEST_HEADER, _RESPONSE_HEADER)
_LITERAL_HEADER: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SAFE_HEADER_VALUE: Final = re.compile(r"[\x20-\x7e]{0,256}")
_MEMO_CHARS: Final = 256
_REQUEST_PATHS: Final = frozenset(("path", "path_info"))
_PLAIN_REQUEST_ATTRIBUTES: Final = frozenset(("method", "scheme", "content_type", "encoding"))
_UA_KEYS: Final = ("http.user_agent", "user_agent.original")
_TARGET_KEYS: Final = ("http.target", "http.url", "url.full")
# The client's IP address, in both generations of names (server spans).
_CLIENT_ADDRESS_KEYS: Final = ("client.address", "net.peer.ip")
# "GET /patients/1/": span names some instrumentations build from the path.
_PATH_WORD: Final = re.compile(r"(?<!\S)/\S*")
_NAME_WITH_PATH: Final = re.compile(r"((?:[A-Z_]{1,20} )?)(/\S*)((?: [a-z]{1,20}){0,3})(.*)", re.DOTALL)

Changes = dict[str, Any]  # attribute -> new value; None: remove it


def header_key(name: str) -> str:
    """``X-Patient-Id`` -> ``x_patient_id``, as the header's attribute key ends."""
    return name.strip().lower().replace("-", "_")


def named_headers(capture: str | None) -> frozenset[str]:
    """The header names a contrib capture variable spells out (``content-type,x-patient-id``),
    leaving out its regular expressions (``x-.*``): as attribute keys end."""
    if not capture:
        return frozenset()
    return frozenset(
        header_key(item) for item in capture.split(",") if _LITERAL_HEADER.fullmatch(item.strip())
    )


def _names(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().lower() for v in values if v.strip())


class HttpPrivacy:
    """The rules of one configuration (`from_settings`); immutable, shared across threads."""

    def __init__(
        self,
        *,
        safe_query_params: Iterable[str] = (),
        redact_query_params: Iterable[str] = (),
        safe_path_segments: Iterable[str] = (),
        safe_headers: Iterable[str] = (),
        redact_headers: Iterable[str] = (),
        raw_paths: bool = False,
        raw_query_values: bool = False,
        raw_user_agent: bool = False,
        raw_header_values: bool = False,
        raw_client_address: bool = False,
        named_headers: Iterable[str] | Callable[[], Collection[str]] = (),
    ) -> None:
        """`named_headers`: the header names the capture variables spell out (`named_headers`),
        or a function that reads them, called only for spans with captured headers."""
        self.redacted_query = _names((*REDACTED_QUERY_PARAMS, *redact_query_params))
        self.safe_query = _names((*urls.SAFE_QUERY_PARAMS, *safe_query_params)) - self.redacted_query
        self.redacted_headers = ALWAYS_REDACTED_HEADERS | {header_key(h) for h in redact_headers if h.strip()}
        self.safe_headers = (SAFE_HEADERS | {header_key(h) for h in safe_headers if h.strip()}) - (
            self.redacted_headers
        )
        # Words kept in paths without a route table (outbound URLs): case-sensitive, as sent.
        self.path_words = urls.API_WORDS | frozenset(w for w in safe_path_segments if w)
        self.raw_paths = raw_paths
        self.raw_query_values = raw_query_values
        self.raw_user_agent = raw_user_agent
        self.raw_header_values = raw_header_values
        self.raw_client_address = raw_client_address
        if callable(named_headers):
            self._named = named_headers
        else:
            fixed = frozenset(named_headers)
            self._named = lambda: fixed
        self._memo = lru_cache(maxsize=1024)(self._target)

    @classmethod
    def from_settings(
        cls, settings: Settings, named: Iterable[str] | Callable[[], Collection[str]] = ()
    ) -> HttpPrivacy:
        return cls(
            safe_query_params=settings.safe_query_params,
            redact_query_params=settings.redact_query_params,
            safe_path_segments=settings.safe_path_segments,
            safe_headers=settings.safe_headers,
            redact_headers=settings.redact_headers,
            raw_paths=settings.capture_url_paths,
            raw_query_values=settings.capture_query_values,
            raw_user_agent=settings.capture_user_agent,
            raw_header_values=settings.capture_header_values,
            raw_client_address=settings.capture_client_address,
            named_headers=named,
        )

    # --- URLs ------------------------------------------------------------------------------

    def target(self, target: str, route: str | None = None, literals: Container[str] | None = None) -> str:
        """A request target or URL as it may be exported (memoised for short targets: the same
        pages are asked for again and again)."""
        if len(target) <= _MEMO_CHARS and (literals is None or isinstance(literals, frozenset)):
            return self._memo(target, route, literals)
        return self._target(target, route, literals)

    def _target(self, target: str, route: str | None, literals: Container[str] | None) -> str:
        return urls.sanitize_target(
            target,
            route,
            literals,
            self.safe_query,
            self.redacted_query,
            raw_paths=self.raw_paths,
            raw_values=self.raw_query_values,
            words=self.path_words,
        )

    def path(self, path: str, route: str | None = None, literals: Container[str] | None = None) -> str:
        if self.raw_paths:
            return path
        return urls.templated_path(path, route, literals, self.path_words)

    def query(self, query: str) -> str:
        if self.raw_query_values:
            return urls.raw_query(query, self.redacted_query)
        return urls.sanitize_query(query, self.safe_query, self.redacted_query)

    def span_name(self, name: str, route: str | None, literals: Container[str] | None) -> str:
        """``GET /patients/1/`` -> ``GET /patients/{id}/``; names without a path unchanged."""
        if not name.startswith("/") and " /" not in name:
            return name  # Django's own names: the method and the route, which has no leading /
        match = _NAME_WITH_PATH.fullmatch(name)
        if match is None:  # some other shape: every word that starts with / is a path
            return _PATH_WORD.sub(lambda m: self.target(m.group(0), route, literals), name)
        method, target, words, rest = match.groups()
        return f"{method}{self.target(target, route, literals)}{words}{' ' + REDACTED if rest else ''}"

    def request_attribute(self, name: str, value: Any, literals: Container[str] | None) -> str:
        """An attribute of the request object that the user asked the contrib to record
        (``OTEL_PYTHON_DJANGO_TRACED_REQUEST_ATTRS=path_info,method,user``): paths like
        ``url.path``, a few attributes that cannot hold patient data kept, any other (``GET``,
        ``COOKIES``, ``user``, ``body``: the request's data) ``REDACTED``."""
        text = value if isinstance(value, str) else ""
        if name in _REQUEST_PATHS:
            return self.path(text, None, literals) if text.startswith("/") else REDACTED
        if name in _PLAIN_REQUEST_ATTRIBUTES and _SAFE_HEADER_VALUE.fullmatch(text):
            return text
        return REDACTED

    # --- span attributes ---------------------------------------------------------------------

    def changes(
        self, attributes: Mapping[str, Any], name: str, literals: Container[str] | None = None
    ) -> tuple[Changes, str]:
        """(attribute changes, span name) for an HTTP span's attributes; `literals`: the route
        literals of the application serving the request (server spans), else None."""
        changes: Changes = {}
        route = attributes.get("http.route")
        route = route if isinstance(route, str) else None
        for key in _TARGET_KEYS:
            value = attributes.get(key)
            if isinstance(value, str):
                safe = self.target(value, route, literals)
                if safe != value:
                    changes[key] = safe
        path = attributes.get("url.path")
        if isinstance(path, str):
            safe = self.path(path, route, literals)
            if safe != path:
                changes["url.path"] = safe
        query = attributes.get("url.query")
        if isinstance(query, str):
            safe = self.query(query)
            if safe != query:
                changes["url.query"] = safe
        if not self.raw_user_agent:
            self._user_agent(attributes, changes)
        if not self.raw_client_address:
            for key in _CLIENT_ADDRESS_KEYS:
                if key in attributes:
                    changes[key] = None
        headers = [key for key in attributes if key.startswith(_HEADER_PREFIXES)]
        if headers:
            named = self._named()
            for key in headers:
                self._header(key, attributes[key], changes, literals, named)
        return changes, self.span_name(name, route, literals)

    def _user_agent(self, attributes: Mapping[str, Any], changes: Changes) -> None:
        header = None
        for key in _UA_KEYS:
            value = attributes.get(key)
            if value is not None:
                changes[key] = None
                header = header or (value if isinstance(value, str) else None)
        if header:
            described = user_agent.describe(header)
            if described is not None:
                changes["user_agent.name"] = described.name
                if described.version:
                    changes["user_agent.version"] = described.version
                if described.os:
                    changes["user_agent.os.name"] = described.os

    def _header(
        self, key: str, value: Any, changes: Changes, literals: Container[str] | None, named: Collection[str]
    ) -> None:
        header = key[len(_REQUEST_HEADER if key.startswith(_REQUEST_HEADER) else _RESPONSE_HEADER) :]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if header in self.redacted_headers:
            changes[key] = [REDACTED] * len(values)
        elif self.raw_header_values:
            return
        elif header in self.safe_headers:
            safe = [self._safe_header_value(header, v, literals) for v in values]
            if safe != values:
                changes[key] = safe
        elif header in named:
            changes[key] = [REDACTED] * len(values)
        else:
            changes[key] = None  # a name the client chose may be data itself (X-Quillfeather)

    def _safe_header_value(self, header: str, value: Any, literals: Container[str] | None) -> str:
        if not isinstance(value, str):
            return REDACTED
        if header == "user_agent":
            if self.raw_user_agent:
                return value
            described = user_agent.describe(value)
            return described.family() if described is not None else REDACTED
        if _SAFE_HEADER_VALUE.fullmatch(value) is None:
            return REDACTED
        if header in _URL_HEADERS:
            return self.target(value, None, literals)
        return value
