from django.apps import AppConfig


class ClinicConfig(AppConfig):
    name = "hms_otel_agent.sample.clinic"
    label = "clinic"
    verbose_name = "Outpatient clinic"
    default_auto_field = "django.db.models.BigAutoField"
