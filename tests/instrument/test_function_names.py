"""Code locations name functions as `code.function.name` asks: qualified (``Class.method``) where
Python has ``co_qualname`` (3.11+), the plain name on 3.10 — and naming a frame never keeps the
application's objects alive (3.10's ``frame.f_locals`` would)."""

from __future__ import annotations

import gc
import sys
import weakref

from hms_otel_agent.instrument.context import function_name

QUALIFIED = sys.version_info >= (3, 11)


def expected(qualified: str) -> str:
    return qualified if QUALIFIED else qualified.rsplit(".", 1)[-1]


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


class Rows:
    def rows(self) -> list[str]:
        return [function_name(sys._getframe()) for _ in range(1)]


def plain() -> str:
    return function_name(sys._getframe())


def test_methods_are_named_after_the_class_that_defines_them() -> None:
    assert Base().method() == expected("Base.method")
    assert Child().method() == expected("Base.method")  # inherited: the defining class
    assert Child().own() == expected("Child.own")
    assert Base.factory() == expected("Base.factory")
    assert Base.helper() == expected("Base.helper")
    assert plain() == "plain"


def test_comprehensions_take_the_name_of_their_function() -> None:
    assert Rows().rows() == [expected("Rows.rows")]


def test_naming_a_frame_keeps_none_of_its_locals_alive() -> None:
    class Row:
        pass

    def caller() -> tuple[str, bool]:
        row = Row()
        ref = weakref.ref(row)
        name = function_name(sys._getframe())
        del row  # the application's del: the object must go now, while this frame still runs
        gc.collect()
        return name, ref() is not None

    name, alive = caller()
    assert not alive
    assert name == expected("test_naming_a_frame_keeps_none_of_its_locals_alive.caller")
