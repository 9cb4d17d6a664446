from django.apps import AppConfig


class HmsConfig(AppConfig):
    name = "hms_otel_agent.sample.hms"
    label = "hms"
    verbose_name = "Hospital management"
    default_auto_field = "django.db.models.BigAutoField"
