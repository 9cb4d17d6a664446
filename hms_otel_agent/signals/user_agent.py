"""User-Agent headers -> browser, major version and operating system, from a fixed vocabulary.

A User-Agent can name its owner's device (``Zebediah's iPhone``), an app build or an
installation. What `describe` returns is made only of the names below and a major version of
at most three digits: no other text of the header can pass. Headers that name none of the
known browsers, bots or tools give None.

Standard library only; memoised (bounded; user agents repeat).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final, NamedTuple

__all__ = ["UserAgent", "describe"]


class UserAgent(NamedTuple):
    name: str
    version: str  # major version, "" when unknown
    os: str  # "" when unknown

    def family(self) -> str:
        """``Firefox 120 / Linux``."""
        text = f"{self.name} {self.version}" if self.version else self.name
        return f"{text} / {self.os}" if self.os else text


_V: Final = r"/([0-9]{1,3})(?![0-9])"

# Crawlers, monitors and probes first: they often imitate a browser around their own name.
_BOTS: Final = (
    "Googlebot",
    "bingbot",
    "DuckDuckBot",
    "Baiduspider",
    "YandexBot",
    "Applebot",
    "facebookexternalhit",
    "Twitterbot",
    "Slackbot",
    "LinkedInBot",
    "AhrefsBot",
    "SemrushBot",
    "UptimeRobot",
    "Pingdom",
    "kube-probe",
    "ELB-HealthChecker",
    "GoogleHC",
    "Prometheus",
    "Blackbox Exporter",
    "Datadog Agent",
    "Zabbix",
    "Nagios",
    "check_http",
)
_BOT_RE: Final = re.compile("|".join(re.escape(b) for b in _BOTS), re.IGNORECASE)
_BOT_NAMES: Final = {b.lower(): b for b in _BOTS}

# Browsers, most specific first (Edge and Opera also say Chrome; Chrome also says Safari).
_BROWSERS: Final = (
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?" + _V)),
    ("Opera", re.compile(r"\b(?:OPR|Opera)" + _V)),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser" + _V)),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)" + _V)),
    ("Chrome", re.compile(r"\b(?:Chrome|CriOS)" + _V)),
    ("Safari", re.compile(r"\bVersion" + _V + r".*\bSafari/")),
    ("Internet Explorer", re.compile(r"\bMSIE ([0-9]{1,2})(?![0-9])|\bTrident/.*\brv:([0-9]{1,2})(?![0-9])")),
)

# HTTP clients and tools, by the product token they start with.
_TOOLS: Final = (
    "curl",
    "Wget",
    "python-requests",
    "python-httpx",
    "aiohttp",
    "Python-urllib",
    "urllib3",
    "okhttp",
    "Go-http-client",
    "Java",
    "Apache-HttpClient",
    "axios",
    "node-fetch",
    "undici",
    "node",
    "PostmanRuntime",
    "insomnia",
    "HTTPie",
    "k6",
    "locust",
    "Dart",
    "Ruby",
    "Faraday",
    "Dalvik",
    "CFNetwork",
)
_TOOL_RE: Final = re.compile(
    r"^(" + "|".join(re.escape(t) for t in _TOOLS) + r")(?:/([0-9]{1,3})(?![0-9])|(?=[/ ;(]|$))",
    re.IGNORECASE,
)
_TOOL_NAMES: Final = {t.lower(): t for t in _TOOLS}
# Apps built on a system HTTP stack put their own (possibly personal) name first.
_EMBEDDED_TOOL_RE: Final = re.compile(
    r"\b(CFNetwork|okhttp|Dalvik)(?:/([0-9]{1,3})(?![0-9]))?", re.IGNORECASE
)

_SYSTEMS: Final = (
    ("Windows", re.compile(r"Windows")),
    ("iOS", re.compile(r"iPhone|iPad|iPod")),
    ("Android", re.compile(r"Android")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("macOS", re.compile(r"Mac OS X|Macintosh")),
    ("Linux", re.compile(r"Linux|X11")),
    ("Darwin", re.compile(r"\bDarwin/")),
)


@lru_cache(maxsize=512)
def describe(header: str) -> UserAgent | None:
    """``Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0`` ->
    ``UserAgent("Firefox", "120", "Linux")``; None for anything not recognised."""
    header = header[:512]
    system = next((name for name, pattern in _SYSTEMS if pattern.search(header)), "")
    bot = _BOT_RE.search(header)
    if bot is not None:
        return UserAgent(_BOT_NAMES[bot.group(0).lower()], "", "")
    for name, pattern in _BROWSERS:
        match = pattern.search(header)
        if match is not None:
            return UserAgent(name, next((g for g in match.groups() if g), ""), system)
    tool = _TOOL_RE.match(header) or _EMBEDDED_TOOL_RE.search(header)
    if tool is not None:
        return UserAgent(_TOOL_NAMES[tool.group(1).lower()], tool.group(2) or "", system)
    return None
