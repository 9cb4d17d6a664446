# Imported by Python at start-up because `hms-otel-run` put this directory first on
# PYTHONPATH: start the agent before the application imports anything.
from hms_otel_agent.launch.boot import boot

boot(__file__)
