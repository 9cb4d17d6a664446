"""Template spans for Django templates: one INTERNAL span per ``Template.render`` (a page's
template and each ``{% include %}``), named ``render <template name>``, with
``hms.template.name``; never the template's content or context. With Django's Jinja2 backend,
one span per page render (Jinja2's own includes run inside it).

``Template.render`` is wrapped rather than ``Template._render``: the Django test runner
replaces ``_render`` with its own instrumented version for the duration of the tests. A parent
template of ``{% extends %}`` renders inside its child's span (Django renders it through
``_render``). Queries, cache and HTTP calls made from a template node carry that template and
line as their code location (`instrument.context.template_location`, reading the node of
Django's ``Node.render_annotated`` frame; for Jinja2, the compiled template's line mapped back
to the template's, `instrument.context.jinja_location`). Applied when Django is set up; undone
by `uninstall`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry import context as context_api
from opentelemetry import trace

from hms_otel_agent import guard
from hms_otel_agent.instrument import context
from hms_otel_agent.signals.vocabulary import TEMPLATE_NAME, TEMPLATE_SCOPE

STRING_TEMPLATE = "<string>"

_originals: list[tuple[type, Callable[..., Any]]] = []  # (class, its own render), to undo


def template_name(template: Any) -> str:
    origin = getattr(template, "origin", None)
    name = getattr(origin, "template_name", None) or getattr(template, "name", None)
    return name if isinstance(name, str) and name else STRING_TEMPLATE


def _wrap(cls: type, tracer: Any) -> None:
    original = cls.render  # type: ignore[attr-defined]

    def render(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = span = None
        try:
            name = template_name(self)
            span = tracer.start_span(f"render {name}", attributes={TEMPLATE_NAME: name})
            token = context_api.attach(trace.set_span_in_context(span))
        except Exception as exc:
            guard.report("template span", exc)
        try:
            return original(self, *args, **kwargs)
        finally:
            if token is not None:
                context_api.detach(token)
            if span is not None:
                span.end()

    render.__wrapped__ = original  # type: ignore[attr-defined]
    cls.render = render  # type: ignore[attr-defined]
    _originals.append((cls, original))


def install(tracer_provider: Any) -> Callable[[], None]:
    """The function that instruments templates once Django is ready."""

    def apply() -> None:
        from django.template.base import Node, Template

        if _originals:
            return
        tracer = trace.get_tracer(TEMPLATE_SCOPE, tracer_provider=tracer_provider)
        _wrap(Template, tracer)
        context._template_node_code = Node.render_annotated.__code__

        def jinja2_backend(module: Any) -> None:
            # Django's Jinja2 backend, when the project uses it (never imported by the agent).
            if _originals and not any(cls is module.Template for cls, _ in _originals):
                try:
                    _wrap(module.Template, tracer)
                except Exception as exc:
                    guard.report("Jinja2 template spans", exc)

        wrapt.register_post_import_hook(jinja2_backend, "django.template.backends.jinja2")

    return apply


def uninstall() -> None:
    while _originals:
        cls, original = _originals.pop()
        cls.render = original  # type: ignore[attr-defined]
    context._template_node_code = None
