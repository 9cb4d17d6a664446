"""Routes as people read them, for hints, the live log and the report.

Django's resolver gives ``http.route`` as the route's own text: ``patients/<int:pk>/summary/``
for ``path()``, and the regular expression for ``re_path()`` and Django REST framework routers,
``api/items/(?P<pk>[^/.]+)/$``. The exported attribute stays as Django gives it (the
specification's "path template in the format used by the framework", and what contrib and every
dashboard built on it group by); the agent's own text shows the template instead:
``api/items/{pk}/`` (named groups as ``{name}``, the notation of DRF's router documentation;
unnamed groups as ``{arg1}``, ``{arg2}``...; anchors dropped, escaped characters unescaped, an
optional trailing slash left out). A regular expression with anything else in it (character
classes, alternatives, repetition outside a group) is shown as it is: a wrong template would
mislead more than a regex.
"""

from __future__ import annotations

_REGEX_CHARS = frozenset("^$()[]{}*+?|\\")
_LITERAL_ESCAPES = frozenset("./-_~:@!&',;=%# ")
_OUTSIDE_GROUPS = frozenset("^$)[]{}*+?|")
_MAX_CACHED = 2048
_cache: dict[str, str] = {}


def readable_route(route: str) -> str:
    """``api/items/(?P<pk>[^/.]+)/$`` -> ``api/items/{pk}/``; anything not a regex as it is."""
    if not route or _REGEX_CHARS.isdisjoint(route):
        return route  # a path() route, or plain text: nothing to do (the usual case)
    shown = _cache.get(route)
    if shown is None:
        shown = _template(route)
        if len(_cache) < _MAX_CACHED:
            _cache[route] = shown
    return shown


def readable_name(name: str, route: str) -> str:
    """A server span's name (``GET <route>``) with its route readable."""
    if route and name.endswith(route):
        shown = readable_route(route)
        if shown != route:
            return name[: len(name) - len(route)] + shown
    return name


def _template(route: str) -> str:
    text = route
    if text.startswith("^"):
        text = text[1:]
    for anchor in ("\\Z", "$"):
        if text.endswith(anchor) and not text.endswith("\\" + anchor):
            text = text[: -len(anchor)]
            break
    if text.endswith("/?") and not text.endswith("\\/?"):
        text = text[:-2]  # DRF's format suffix routes: an optional trailing slash
    out: list[str] = []
    unnamed = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if not escaped or escaped not in _LITERAL_ESCAPES:
                return route  # \d, \w, ...: a character class outside the groups
            out.append(escaped)
            index += 2
            continue
        if char == "(":
            end = _group_end(text, index)
            if end < 0:
                return route
            if text.startswith("(?P<", index):
                close = text.find(">", index)
                name = text[index + 4 : close]
                if close < 0 or not name.isidentifier():
                    return route
                out.append("{" + name + "}")
            elif text.startswith("(?", index):
                return route  # non-capturing groups, look-arounds, flags: not a template
            else:
                unnamed += 1
                out.append(f"{{arg{unnamed}}}")
            index = end + 1
            if index < len(text) and text[index] in "?*+{":
                return route  # an optional or repeated group
            continue
        if char in _OUTSIDE_GROUPS:
            return route  # regex syntax outside the groups: not a template
        out.append(char)  # ("." too: in a route it is meant as a dot)
        index += 1
    return "".join(out)


def _group_end(text: str, start: int) -> int:
    """Index of the ')' closing the group opened at `start` (-1 if unbalanced); escapes and
    character classes (``[^/.]``, ``[()]``) are skipped."""
    depth = 0
    index = start
    in_class = False
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            if text.startswith("[]", index) or text.startswith("[^]", index):
                index += 2 if text[index + 1] == "]" else 3  # a literal "]" first in the class
                continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return -1
