"""Template spans on the clinic's ward board (in-process Django, real PostgreSQL): one span per
render with the template's name, the N+1 that happens inside an included template attributed
to that template and line, and the request's time split with template time in it."""

from __future__ import annotations

from pathlib import Path

from harness.traced import Traced

from hms_otel_agent import sample

SCOPE = "hms_otel_agent.django_templates"
FRAGMENT = "clinic/_ward_summary.html"


def template_line(name: str, text: str) -> int:
    path = Path(sample.__file__).parent / "clinic" / "templates" / name
    [line] = [i for i, content in enumerate(path.read_text().splitlines(), 1) if text in content]
    return line


def test_template_spans_and_the_n_plus_one_inside_a_template(traced: Traced) -> None:
    response, server = traced.request("/clinic/wards/board/")
    assert response.status_code == 200
    templates = [s for s in traced.spans() if s.instrumentation_scope.name == SCOPE]
    names = sorted(str((s.attributes or {})["hms.template.name"]) for s in templates)
    assert names == [FRAGMENT, FRAGMENT, "clinic/ward_board.html"]
    assert sorted(s.name for s in templates) == [f"render {n}" for n in names]
    [page] = [s for s in templates if s.name == "render clinic/ward_board.html"]
    assert page.parent is not None and page.parent.span_id == server.context.span_id
    for fragment in (s for s in templates if s is not page):
        assert fragment.parent is not None and fragment.parent.span_id == page.context.span_id
    # the template's queries are its children, and the request's findings
    queries = [s for s in traced.children_of(templates[0]) if "db.system" in (s.attributes or {})]
    assert queries
    n_plus_one = [e for e in traced.events(server, "hms.n_plus_one")]
    assert n_plus_one
    line = template_line(FRAGMENT, "ward.site.code")
    for event in n_plus_one:
        assert (event["code.file.path"], event["code.line.number"], event["code.function.name"]) == (
            FRAGMENT,
            line,
            "template",
        )
    relations = sorted(str(e.get("hms.orm.relation")) for e in n_plus_one)
    assert "clinic.Ward.site" in relations
    attributes = server.attributes or {}
    assert attributes["hms.time.template_ms"] > 0 and attributes["hms.time.db_ms"] > 0
    # no template content in any span: a ward's name is rendered data
    from hms_otel_agent.sample.clinic.models import Ward

    names_rendered = [w.name for w in Ward.objects.all()]
    text = "\n".join(s.to_json() for s in traced.spans())
    assert not any(name in text for name in names_rendered)


def test_the_optimized_twin_has_the_spans_and_no_n_plus_one(traced: Traced) -> None:
    _, server = traced.request("/clinic/wards/board/optimized/")
    templates = [s for s in traced.spans() if s.instrumentation_scope.name == SCOPE]
    assert len(templates) == 3
    assert traced.events(server, "hms.n_plus_one") == []


def test_a_string_template_is_named_without_its_content(traced: Traced) -> None:
    from django.template import Context, Template

    with traced.tracer.start_as_current_span("job"):
        assert Template("Dear {{ name }}").render(Context({"name": "Quillfeather"})) == "Dear Quillfeather"
    [span] = [s for s in traced.spans() if s.instrumentation_scope.name == SCOPE]
    assert span.name == "render <string>"
    assert "Quillfeather" not in span.to_json() and "Dear" not in span.to_json()


def test_jinja2_backend_render_span_and_n_plus_one_at_the_template_line(
    traced: Traced, tmp_path: Path
) -> None:
    """Django's Jinja2 backend: one span per render, a lazy load in the template located at the
    template's own line (the compiled code's line mapped back)."""
    from django.template.backends.jinja2 import Jinja2

    from hms_otel_agent.sample.hms.models import Patient

    (tmp_path / "patients.jinja").write_text(
        "<ul>\n{% for p in patients %}\n"
        "<li>{{ p.insurance.name if p.insurance else '' }}</li>\n"  # line 3
        "{% endfor %}\n</ul>\n"
    )
    engine = Jinja2({"NAME": "jinja2", "DIRS": [str(tmp_path)], "APP_DIRS": False, "OPTIONS": {}})
    insured = Patient.objects.filter(insurance__isnull=False).order_by("id")[:8]
    with traced.tracer.start_as_current_span("nightly-letters"):
        engine.get_template("patients.jinja").render({"patients": insured})
    [owner] = [s for s in traced.spans() if s.name == "nightly-letters"]
    [render] = [s for s in traced.spans() if s.instrumentation_scope.name == SCOPE]
    assert (
        render.name == "render patients.jinja"
        and (render.attributes or {})["hms.template.name"] == "patients.jinja"
    )
    [event] = traced.events(owner, "hms.n_plus_one")
    assert (event["hms.orm.relation"], event["code.file.path"], event["code.line.number"]) == (
        "hms.Patient.insurance",
        "patients.jinja",
        3,
    )
    assert event["code.function.name"] == "template"
