"""A small fake FHIR R4 server on loopback, for the sample app's outbound-HTTP views, the demo
and the tests: ``Patient/{id}`` reads, ``Patient?_id=a,b,c`` and ``Observation?patient=a,b,c``
searches (comma-separated values OR'ed, as FHIR does), answered from the id alone with a fixed
delay per request (a remote server's latency). Runs in a thread of the process that starts it.
Standard library only.

    with FakeFhirServer() as base_url:   # http://127.0.0.1:<port>/fhir
        ...
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE_PATH = "/fhir"
OBSERVATIONS_PER_PATIENT = 3


def patient(logical_id: str) -> dict[str, Any]:
    number = zlib.crc32(logical_id.encode())
    return {
        "resourceType": "Patient",
        "id": logical_id,
        "active": number % 7 != 0,
        "generalPractitioner": [{"reference": f"Practitioner/gp-{number % 12}"}],
    }


def observations(logical_id: str) -> list[dict[str, Any]]:
    number = zlib.crc32(logical_id.encode())
    return [
        {
            "resourceType": "Observation",
            "id": f"{logical_id}-hr-{index}",
            "subject": {"reference": f"Patient/{logical_id}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 55 + (number >> index) % 50, "unit": "/min"},
        }
        for index in range(OBSERVATIONS_PER_PATIENT)
    ]


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the demo prints its own lines
        pass

    def do_GET(self) -> None:
        self.server.count()
        time.sleep(self.server.delay_s)
        url = urlsplit(self.path)
        parts = [p for p in url.path.removeprefix(BASE_PATH).split("/") if p]
        query = {k: ",".join(v).split(",") for k, v in parse_qs(url.query).items()}
        body: dict[str, Any] | None = None
        if parts == ["metadata"]:
            body = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "status": "active"}
        elif len(parts) == 2 and parts[0] == "Patient":
            body = patient(parts[1])
        elif parts == ["Patient"] and "_id" in query:
            body = bundle([patient(i) for i in query["_id"]])
        elif parts == ["Observation"] and "patient" in query:
            body = bundle([o for i in query["patient"] for o in observations(i)])
        if body is None:
            body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
        data = json.dumps(body).encode()
        self.send_response(200 if body["resourceType"] != "OperationOutcome" else 404)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, delay_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay_s = delay_s
        self.requests = 0
        self._lock = threading.Lock()

    def count(self) -> None:
        with self._lock:
            self.requests += 1


class FakeFhirServer:
    """The server on a free loopback port, in a daemon thread; `url` once started."""

    def __init__(self, delay_ms: float = 3.0) -> None:
        self._server = _Server(delay_ms / 1000)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-fhir", daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{BASE_PATH}"

    @property
    def requests(self) -> int:
        return self._server.requests

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
