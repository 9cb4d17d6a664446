"""The sample's Celery app: ``celery -A hms_otel_agent.sample.tasks worker``.

The broker is ``CELERY_BROKER_URL``, else ``REDIS_URL`` (Celery is not a dependency of the
sample: install it to use this module). Tasks run in the worker with the sample's settings.
"""

from __future__ import annotations

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hms_otel_agent.sample.settings")
django.setup()

from hms_otel_agent.sample.hms import jobs  # noqa: E402 - models need django.setup()

app = Celery(
    "hms",
    broker=os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry=False)


@app.task(name="hms.send_reminders")
def send_reminders(limit: int = 20, optimized: bool = False) -> int:
    return jobs.send_reminders(limit, optimized=optimized)
