"""Code locations name functions as `code.function.name` asks: qualified (``Class.method``), on
every supported Python (3.10 has no ``co_qualname``: the class comes from ``self`` / ``cls``)."""

from __future__ import annotations

import sys
from typing import Any

from hms_otel_agent.instrument.context import function_name


class Base:
    def method(self) -> str:
        return function_name(sys._getframe())

    @classmethod
    def factory(cls) -> str:
        return function_name(sys._getframe())

    @staticmethod
    def helper() -> str:
        return function_name(sys._getframe())


class Child(Base):
    def own(self) -> str:
        return function_name(sys._getframe())


class Hostile:
    """An object whose attribute lookups raise: naming must not."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("__class__", "__dict__"):
            raise RuntimeError(name)
        return object.__getattribute__(self, name)

    def method(self) -> str:
        return function_name(sys._getframe())


def plain() -> str:
    return function_name(sys._getframe())


def test_methods_are_named_after_the_class_that_defines_them() -> None:
    assert Base().method() == "Base.method"
    assert Child().method() == "Base.method"  # inherited: the defining class, as co_qualname says
    assert Child().own() == "Child.own"
    assert Base.factory() == "Base.factory"
    assert Child.factory() == "Base.factory"


def test_functions_and_unresolvable_methods() -> None:
    assert plain() == "plain"
    name = Hostile().method()  # never raises; the class when the object lets it be read
    assert name in ("Hostile.method", "method")
    # a static method has no self or cls: its qualified name needs co_qualname (3.11+)
    assert Base.helper() == ("Base.helper" if sys.version_info >= (3, 11) else "helper")


def test_comprehensions_take_the_name_of_their_function() -> None:
    assert Rows().rows() == ["Rows.rows"]


class Rows:
    def rows(self) -> list[str]:
        return [function_name(sys._getframe()) for _ in range(1)]
