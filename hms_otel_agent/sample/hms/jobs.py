"""The sample hospital's background work: appointment reminders.

One function, run the ways real projects run such work -- as a management command
(``send_reminders``), a Celery task (``hms_otel_agent.sample.tasks``), an RQ job (enqueue
``hms_otel_agent.sample.hms.jobs.send_reminders``), or from a script -- so that the agent's
finding for it can be seen under each kind of owner. The naive form reads each appointment's
patient lazily (an N+1 on ``Appointment.patient``); ``optimized=True`` joins it.
"""

from __future__ import annotations

from .models import Appointment


def send_reminders(limit: int = 20, optimized: bool = False) -> int:
    """Build a reminder for each of the next `limit` booked appointments; returns how many."""
    appointments = Appointment.objects.filter(status="booked").order_by("scheduled_for", "id")
    if optimized:
        appointments = appointments.select_related("patient")
    messages = []
    for appointment in appointments[:limit]:
        patient = appointment.patient
        messages.append(f"{patient.given_name}: appointment at {appointment.scheduled_for:%H:%M}")
    return len(messages)
