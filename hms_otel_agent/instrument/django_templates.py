"""Template spans for Django templates: one INTERNAL span per ``Template.render`` (a page's
template and each ``{% include %}``), named ``render <template name>``, with
``hms.template.name``; never the template's content or context.

``Template.render`` is wrapped rather than ``Template._render``: the Django test runner
replaces ``_render`` with its own instrumented version for the duration of the tests. A parent
template of ``{% extends %}`` renders inside its child's span (Django renders it through
``_render``). Queries, cache and HTTP calls made from a template node carry that template and
line as their code location (`instrument.context.template_location`, reading the node of
Django's ``Node.render_annotated`` frame). Applied when Django is set up; undone by
`uninstall`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace

from hms_otel_agent import guard
from hms_otel_agent.instrument import context
from hms_otel_agent.signals.vocabulary import TEMPLATE_NAME, TEMPLATE_SCOPE

STRING_TEMPLATE = "<string>"

_original: Callable[..., Any] | None = None


def template_name(template: Any) -> str:
    origin = getattr(template, "origin", None)
    name = getattr(origin, "template_name", None) or getattr(template, "name", None)
    return name if isinstance(name, str) and name else STRING_TEMPLATE


def install(tracer_provider: Any) -> Callable[[], None]:
    """The function that instruments templates once Django is ready."""

    def apply() -> None:
        global _original
        from django.template.base import Node, Template

        if _original is not None:
            return
        tracer = trace.get_tracer(TEMPLATE_SCOPE, tracer_provider=tracer_provider)
        original = Template.render

        def render(self: Any, template_context: Any) -> Any:
            token = span = None
            try:
                name = template_name(self)
                span = tracer.start_span(f"render {name}", attributes={TEMPLATE_NAME: name})
                token = context_api.attach(trace.set_span_in_context(span))
            except Exception as exc:
                guard.report("template span", exc)
            try:
                return original(self, template_context)
            finally:
                if token is not None:
                    context_api.detach(token)
                if span is not None:
                    span.end()

        render.__wrapped__ = original  # type: ignore[attr-defined]
        Template.render = render
        _original = original
        context._template_node_code = Node.render_annotated.__code__

    return apply


def uninstall() -> None:
    global _original
    if _original is None:
        return
    from django.template.base import Template

    Template.render = _original
    _original = None
    context._template_node_code = None
