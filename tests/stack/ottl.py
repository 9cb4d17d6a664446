"""A small interpreter for the OTTL statements of collector-config/, so that tests can run the
collector's transform processors on real spans without a collector.

It knows only the grammar and functions the configs use, and refuses anything else (an unknown
function, path or token is a ParseError, never silently skipped): a statement it cannot run is a
statement the tests cannot vouch for. Semantics follow the OTTL documentation of the collector
version docker-compose.yml pins:

* paths ``span.attributes["k"]``, ``span.kind``, ``span.name``, ``spanevent.attributes["k"]``,
  ``spanevent.name``, ``resource.attributes["k"]``; a missing attribute is ``nil``;
* literals: strings (``\\`` escapes), integers, floats, ``true``/``false``, ``nil``, lists, the
  ``SPAN_KIND_*`` enums;
* conditions: ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``and``, ``or``, ``not``, parentheses;
  values of different types are never equal and never ordered (the comparison is false);
* editors ``set``, ``delete_key``, ``delete_matching_keys``, ``replace_pattern`` (Go's
  ``$1``/``${1}`` expansion; a target that is not a string is left alone); converters ``IsMatch``
  (false for a value that is not a string) and ``Format`` (``%d``, ``%s``, ``%v``).

Statements run in order, each on every span (span context) or every span event (spanevent
context). The configs use ``error_mode: ignore``, under which the collector logs a statement that
fails at run time and goes on; here it raises RunError, since such a statement is a bug.
Regular expressions are RE2 in the collector and Python's ``re`` here: patterns with constructs
the two read differently (look-around, back-references, possessive or atomic groups) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
}


class ParseError(ValueError):
    pass


class RunError(RuntimeError):
    """A statement failed on one item (the collector logs it and goes on with error_mode ignore)."""


@dataclass
class Event:
    name: str
    attributes: dict[str, Any]


@dataclass
class Span:
    """What the interpreter reads and writes: plain data, copied from a received span."""

    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    status_code: str = "STATUS_CODE_UNSET"
    trace_id: str = ""
    scope: str = ""
    start_ns: int = 0
    end_ns: int = 0


# --- tokens ---------------------------------------------------------------------------------------

TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<op>==|!=|<=|>=|<|>)
    | (?P<punct>[()\[\],.])
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ParseError(f"cannot read {text[pos : pos + 30]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def unescape(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


# --- syntax tree ----------------------------------------------------------------------------------

Getter = Callable[[Any], Any]  # item -> value


@dataclass(frozen=True)
class Path:
    context: str  # span | spanevent | resource
    field: str  # attributes | kind | name
    key: str | None  # attribute key

    def get(self, item: Any) -> Any:
        target = self._target(item)
        if self.field == "attributes":
            return target.attributes.get(self.key) if self.context != "resource" else target.get(self.key)
        return getattr(target, self.field)

    def attributes(self, item: Any) -> dict[str, Any]:
        if self.field != "attributes" or self.key is not None:
            raise ParseError(f"{self} is not an attribute map")
        target = self._target(item)
        return target if self.context == "resource" else target.attributes

    def set(self, item: Any, value: Any) -> None:
        if self.field != "attributes" or self.key is None:
            raise ParseError(f"cannot set {self}")
        if value is None:
            return  # OTTL: setting nil is a no-op
        target = self._target(item)
        (target if self.context == "resource" else target.attributes)[self.key] = value

    def _target(self, item: Any) -> Any:
        span, event = item
        if self.context == "span":
            return span
        if self.context == "spanevent":
            if event is None:
                raise ParseError("spanevent path in a span-context statement")
            return event
        return span.resource

    def __str__(self) -> str:
        key = f'["{self.key}"]' if self.key is not None else ""
        return f"{self.context}.{self.field}{key}"


ALLOWED_FIELDS = {
    "span": {"attributes", "kind", "name"},
    "spanevent": {"attributes", "name"},
    "resource": {"attributes"},
}


@dataclass
class Statement:
    text: str
    context: str  # span | spanevent
    run: Callable[[Any], None]
    paths: list[Path]


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.paths: list[Path] = []

    # helpers
    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        tok_kind, tok_value = self.peek()
        if (kind and tok_kind != kind) or (value and tok_value != value):
            raise ParseError(f"expected {value or kind} at {tok_value!r} in {self.text!r}")
        self.pos += 1
        return tok_value

    # statement := editor "(" args ")" ["where" condition]
    def statement(self) -> Statement:
        editor = self.take("name")
        self.take("punct", "(")
        args = self.arguments()
        condition: Getter = lambda item: True  # noqa: E731
        if self.peek() == ("name", "where"):
            self.take()
            condition = self.condition()
        if self.peek()[0] != "end":
            raise ParseError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        contexts = {p.context for p in self.paths} - {"resource"}
        if len(contexts) != 1:
            raise ParseError(f"one span or spanevent context per statement: {self.text!r}")
        run = self.editor(editor, args)

        def guarded(item: Any) -> None:
            if condition(item) is True:
                run(item)

        return Statement(self.text, contexts.pop(), guarded, list(self.paths))

    def editor(self, name: str, args: list[Any]) -> Callable[[Any], None]:
        if name == "set":
            target, value = args
            self.need_path(target, name)
            return lambda item: target.set(item, value(item))
        if name == "delete_key":
            target, key = args
            self.need_path(target, name)
            literal = self.literal(key, str, name)
            return lambda item: target.attributes(item).pop(literal, None)
        if name == "delete_matching_keys":
            target, pattern = args
            self.need_path(target, name)
            regex = compile_re2(self.literal(pattern, str, name))

            def delete_matching(item: Any) -> None:
                attributes = target.attributes(item)
                for key in [k for k in attributes if regex.search(k)]:
                    del attributes[key]

            return delete_matching
        if name == "replace_pattern":
            target, pattern, replacement = args
            self.need_path(target, name)
            regex = compile_re2(self.literal(pattern, str, name))
            template = go_template(self.literal(replacement, str, name))

            def replace(item: Any) -> None:
                value = target.get(item)
                if isinstance(value, str):
                    target.set(item, regex.sub(template, value))

            return replace
        raise ParseError(f"unknown editor {name}")

    @staticmethod
    def need_path(arg: Any, editor: str) -> None:
        if not isinstance(arg, PathGetter):
            raise ParseError(f"{editor}: the first argument must be a path")

    @staticmethod
    def literal(arg: Any, kind: type, editor: str) -> Any:
        if not isinstance(arg, Literal) or not isinstance(arg.value, kind):
            raise ParseError(f"{editor}: expected a {kind.__name__} literal")
        return arg.value

    def arguments(self) -> list[Any]:
        args = []
        while self.peek() != ("punct", ")"):
            args.append(self.value())
            if self.peek() == ("punct", ","):
                self.take()
        self.take("punct", ")")
        return args

    # condition := and ("or" and)* ; and := not ("and" not)* ; not := ["not"] atom
    def condition(self) -> Getter:
        left = self.conjunction()
        while self.peek() == ("name", "or"):
            self.take()
            right = self.conjunction()
            left = (lambda a, b: lambda item: a(item) is True or b(item) is True)(left, right)
        return left

    def conjunction(self) -> Getter:
        left = self.negation()
        while self.peek() == ("name", "and"):
            self.take()
            right = self.negation()
            left = (lambda a, b: lambda item: a(item) is True and b(item) is True)(left, right)
        return left

    def negation(self) -> Getter:
        if self.peek() == ("name", "not"):
            self.take()
            inner = self.negation()
            return lambda item: inner(item) is not True
        if self.peek() == ("punct", "("):
            self.take()
            inner = self.condition()
            self.take("punct", ")")
            return inner
        left = self.value()
        if self.peek()[0] != "op":
            if isinstance(left, Converter) and left.boolean:
                return left
            raise ParseError(f"expected a comparison in {self.text!r}")
        op = self.take("op")
        right = self.value()
        return lambda item: compare(left(item), op, right(item))

    # value := path | literal | list | converter
    def value(self) -> Any:
        kind, text = self.peek()
        if kind == "string":
            self.take()
            return Literal(unescape(text))
        if kind == "number":
            self.take()
            return Literal(float(text) if "." in text else int(text))
        if kind == "punct" and text == "[":
            self.take()
            items = []
            while self.peek() != ("punct", "]"):
                items.append(self.value())
                if self.peek() == ("punct", ","):
                    self.take()
            self.take("punct", "]")
            return ListValue(items)
        if kind != "name":
            raise ParseError(f"unexpected {text!r} in {self.text!r}")
        if text in ("true", "false"):
            self.take()
            return Literal(text == "true")
        if text == "nil":
            self.take()
            return Literal(None)
        if text in SPAN_KINDS:
            self.take()
            return Literal(text)
        if text in ALLOWED_FIELDS:
            return self.path()
        if self.peek(1) == ("punct", "("):
            return self.converter()
        raise ParseError(f"unknown name {text!r} in {self.text!r}")

    def path(self) -> PathGetter:
        context = self.take("name")
        self.take("punct", ".")
        name = self.take("name")
        if name not in ALLOWED_FIELDS[context]:
            raise ParseError(f"unsupported path {context}.{name}")
        key = None
        if name == "attributes" and self.peek() == ("punct", "["):
            self.take()
            key = unescape(self.take("string"))
            self.take("punct", "]")
        path = Path(context, name, key)
        self.paths.append(path)
        return PathGetter(path)

    def converter(self) -> Converter:
        name = self.take("name")
        self.take("punct", "(")
        args = self.arguments()
        if name == "IsMatch":
            target, pattern = args
            regex = compile_re2(self.literal(pattern, str, name))
            return Converter(lambda item: isinstance(v := target(item), str) and bool(regex.search(v)), True)
        if name == "Format":
            fmt, values = args
            template = self.literal(fmt, str, name)
            if not isinstance(values, ListValue):
                raise ParseError("Format: the second argument must be a list")
            return Converter(lambda item: go_format(template, [v(item) for v in values.items]), False)
        raise ParseError(f"unknown converter {name}")


class Literal:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, item: Any) -> Any:
        return self.value


class ListValue:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __call__(self, item: Any) -> Any:
        return [v(item) for v in self.items]


class PathGetter:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, item: Any) -> Any:
        return self.path.get(item)

    def get(self, item: Any) -> Any:
        return self.path.get(item)

    def set(self, item: Any, value: Any) -> None:
        self.path.set(item, value)

    def attributes(self, item: Any) -> dict[str, Any]:
        return self.path.attributes(item)


class Converter:
    def __init__(self, fn: Getter, boolean: bool) -> None:
        self.fn = fn
        self.boolean = boolean

    def __call__(self, item: Any) -> Any:
        return self.fn(item)


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def compare(left: Any, op: str, right: Any) -> bool:
    if _kind(left) != _kind(right):
        return op == "!="
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if left is None or isinstance(left, bool):
        return False
    return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op])


RE2_UNSUPPORTED = re.compile(r"\(\?[=!<>]|\(\?P=|\\[1-9]|[*+?}]\+|\(\?>")


def compile_re2(pattern: str) -> re.Pattern[str]:
    if RE2_UNSUPPORTED.search(pattern):
        raise ParseError(f"{pattern!r}: not RE2 (or read differently by Python's re)")
    return re.compile(pattern)


def go_template(replacement: str) -> str:
    """Go's Regexp.ReplaceAllString template ($1, ${1}, $$) -> a Python re replacement."""
    out, pos = [], 0
    for m in re.finditer(r"\$(?:\{(\w+)\}|(\d+)|\$)", replacement):
        out.append(replacement[pos : m.start()].replace("\\", "\\\\"))
        group = m.group(1) or m.group(2)
        out.append(f"\\g<{group}>" if group else "$")
        pos = m.end()
    out.append(replacement[pos:].replace("\\", "\\\\"))
    return "".join(out)


def go_format(template: str, values: list[Any]) -> str:
    it = iter(values)

    def one(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        value = next(it)
        if verb == "d":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"%!d({_kind(value)}={value})"
            return str(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return re.sub(r"%([dsv%])", one, template)


def parse(text: str) -> Statement:
    """One statement as written in a collector config (``$$`` is the config's escape for ``$``)."""
    return Parser(text.replace("$$", "$")).statement()


@dataclass
class Transform:
    statements: list[Statement]

    @classmethod
    def from_config(cls, processor: dict[str, Any]) -> Transform:
        if processor.get("error_mode") != "ignore":
            raise ParseError("these configs run transforms with error_mode: ignore")
        return cls([parse(s) for s in processor["trace_statements"]])

    def apply(self, span: Span) -> None:
        for statement in self.statements:
            items = [(span, None)] if statement.context == "span" else [(span, e) for e in span.events]
            for item in items:
                try:
                    statement.run(item)
                except (TypeError, KeyError, StopIteration) as exc:
                    raise RunError(f"{statement.text}: {exc!r}") from exc
