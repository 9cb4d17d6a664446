"""Readable routes: regex routes (re_path, Django REST framework routers) as templates.

The router routes below are what Django's resolver gave for a DefaultRouter under ``api/``
(DRF 3.18); tests/e2e/test_routes.py runs a real router and a re_path under the agent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hms_otel_agent.signals.routes import readable_name, readable_route


@pytest.mark.parametrize(
    ("route", "shown"),
    [
        # path() routes and plain text: as they are
        ("patients/<int:pk>/summary/", "patients/<int:pk>/summary/"),
        ("api/", "api/"),
        ("robots.txt", "robots.txt"),
        ("", ""),
        # re_path() and router routes
        ("api/items/$", "api/items/"),
        ("api/items/(?P<pk>[^/.]+)/$", "api/items/{pk}/"),
        (r"api/items/(?P<pk>[^/.]+)\.(?P<format>[a-z0-9]+)/?$", "api/items/{pk}.{format}"),
        (r"^legacy/(?P<year>[0-9]{4})/(?P<slug>[\w-]+)/$", "legacy/{year}/{slug}/"),
        (r"^old/(\d+)/(\d+)/\Z", "old/{arg1}/{arg2}/"),
        (r"^x/(?P<a>[()]+)/$", "x/{a}/"),  # parentheses inside a character class
        (r"^x/(?P<a>\))/$", "x/{a}/"),
        (r"^robots\.txt$", "robots.txt"),
        # not a template: shown as written rather than wrong
        (r"^a{2}/$", r"^a{2}/$"),
        (r"^(?:en|de)/home/$", r"^(?:en|de)/home/$"),
        (r"^home|start$", r"^home|start$"),
        (r"^items/\d+/$", r"^items/\d+/$"),
        (r"^items/(?P<pk>\d+)?/$", r"^items/(?P<pk>\d+)?/$"),
        (r"^items/(?P<pk>\d+/$", r"^items/(?P<pk>\d+/$"),  # unbalanced
        (r"^items/(?P<1x>\d+)/$", r"^items/(?P<1x>\d+)/$"),
    ],
)
def test_readable_route(route: str, shown: str) -> None:
    assert readable_route(route) == shown


regexish = st.lists(
    st.sampled_from([*"ab/().[]^$?*+{}|\\<>:-_Pdw0", "(?P<pk>", "[^/.]+)", "\\.", "\\d+"])
).map("".join)


@given(regexish | st.text())
def test_any_route_gives_a_template_or_itself(route: str) -> None:
    shown = readable_route(route)
    assert shown == route or not (set(shown) & set("^$()[]*+?|\\"))
    assert readable_route(shown) == shown  # a template is left alone
    assert readable_name(f"GET {route}", route) == f"GET {shown}"
