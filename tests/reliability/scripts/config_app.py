"""A small Django application for the configuration tests: answers a few requests through
Django's full request path (with contrib's middleware when the agent instruments it), WSGI
and ASGI, and prints each answer. Run under hms-otel-run and without it: the output must be
the same. With an argument, it also prints the OTEL_* and HMS_OTEL_* names the process read
from the environment (as JSON, last line): the recorder is installed before anything else."""

from __future__ import annotations

import asyncio
import json
import os
import sys

READ: set[str] = set()

if len(sys.argv) > 1 and sys.argv[1] == "--record-reads":

    def _note(key: object) -> None:
        """Record a read of an OTEL_*/HMS_OTEL_* name by code outside the agent's package (the
        agent reads every name of its table; what matters is what the SDK and contrib read)."""
        if not isinstance(key, str) or not key.startswith(("OTEL_", "HMS_OTEL_")):
            return
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.endswith(
            ("os.py", "_collections_abc.py", "_collections_abc>")
        ):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None or os.sep + "hms_otel_agent" + os.sep not in frame.f_code.co_filename:
            READ.add(key)

    class _Recording(type(os.environ)):  # type: ignore[misc]
        def __getitem__(self, key: str) -> str:
            _note(key)
            return super().__getitem__(key)

        def __contains__(self, key: object) -> bool:
            _note(key)
            return super().__contains__(key)

    os.environ.__class__ = _Recording
    from hms_otel_agent import agent

    agent.start()

import django  # noqa: E402 -- after the recorder
from django.conf import settings  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    SECRET_KEY="config-tests",
    USE_TZ=True,
)


def echo(request: HttpRequest, pk: int = 0) -> JsonResponse:
    response = JsonResponse({"path": request.path, "pk": pk, "q": request.GET.get("q")})
    response["X-Patient-Id"] = "MRN-QZ7731X"
    return response


urlpatterns = [path("patients/<int:pk>/", echo), path("health/", echo)]
django.setup()

from django.test import AsyncClient, Client  # noqa: E402

REQUESTS = ["/patients/3/?q=Quillfeather", "/health/", "/no/such/page/"]
HEADERS = {"HTTP_AUTHORIZATION": "Bearer t0ken", "HTTP_X_PATIENT_ID": "MRN-QZ7731X", "HTTP_COOKIE": "s=1"}
client = Client()
for url in REQUESTS:
    answer = client.get(url, **HEADERS)  # type: ignore[arg-type]
    print("wsgi", url, answer.status_code, answer.content.decode())


async def asgi() -> None:
    async_client = AsyncClient()
    for url in REQUESTS:
        answer = await async_client.get(url, **HEADERS)  # type: ignore[arg-type]
        print("asgi", url, answer.status_code, answer.content.decode())


asyncio.run(asgi())
try:
    from hms_otel_agent import agent as _agent

    built = _agent.current_pipeline()
    if built is not None:
        built.force_flush(5000)
except ImportError:
    pass
if READ:
    print(json.dumps(sorted(READ)))
