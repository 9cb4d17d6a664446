# The bundled HMS sample app under hms-otel-agent, for the docker-compose stack.
#
# Installs the package the way README.md says (`pip install '.[demo]'` from the source tree),
# migrates and seeds the sample database, then serves the app with gunicorn under hms-otel-run.
# DATABASE_URL, REDIS_URL and the OTEL_* variables come from docker-compose.yml.
#
# The demo extra pulls pgserver, which publishes x86_64 wheels only: docker-compose.yml builds this
# image for linux/amd64 (emulated on arm64 hosts).
FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY . /src
RUN pip install '.[demo]' \
    && useradd --create-home --uid 10001 hms

USER hms
WORKDIR /home/hms
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health/', timeout=2)"]

# seed_hms empties and refills the hms tables (deterministic data, dates around today).
CMD ["sh", "-c", "python -m hms_otel_agent.sample migrate --noinput && python -m hms_otel_agent.sample seed_hms && exec hms-otel-run -- gunicorn hms_otel_agent.sample.wsgi -b 0.0.0.0:8000 -w 2 --access-logfile -"]
