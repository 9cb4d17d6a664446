"""The clinic's pages: each naive page, its optimized twin, and how to compare what they render.

Standard library only: tests, the demo and scripts import it without setting Django up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SITE_CODES = "NTH,STH,EST,NTH,STH"  # seeded sites, two of them twice
MEDICATION_NAMES = "Paracetamol,Amoxil,Ramipril,Losec,Aspirin"  # seeded; Medication.name is not unique


@dataclass(frozen=True)
class Page:
    name: str
    naive: str
    optimized: str
    admin: bool = False  # needs a staff user; compare the changelist's result table only

    def compare(self, content: bytes) -> str:
        """What must be equal between the twins: the body, without what differs by design
        (CSRF tokens, the twin's own URL prefix, the optimized admin site's other apps)."""
        text = content.decode()
        text = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", text)
        text = text.replace("/clinic/admin-optimized/", "/admin/").replace("visits-optimized/", "visits/")
        if self.admin:
            found = re.search(r'<table id="result_list">.*?</table>', text, re.S)
            text = found.group(0) if found else ""
        return text


PAGES = (
    Page("visit-list", "/clinic/visits/?page=2", "/clinic/visits/optimized/?page=2"),
    Page("ward-board", "/clinic/wards/board/", "/clinic/wards/board/optimized/"),
    Page("handovers", "/clinic/handovers/", "/clinic/handovers/optimized/"),
    Page("open-visits", "/clinic/wards/open-visits/", "/clinic/wards/open-visits/optimized/"),
    Page("workload", "/clinic/clinicians/workload/", "/clinic/clinicians/workload/optimized/"),
    Page(
        "lookup",
        f"/clinic/lookup/?sites={SITE_CODES}&medications={MEDICATION_NAMES}",
        f"/clinic/lookup/optimized/?sites={SITE_CODES}&medications={MEDICATION_NAMES}",
    ),
    Page(
        "lookup-async",
        f"/clinic/lookup/async/?sites={SITE_CODES}",
        f"/clinic/lookup/async/optimized/?sites={SITE_CODES}",
    ),
    Page("dashboard", "/clinic/dashboard/", "/clinic/dashboard/optimized/"),
    Page("export", "/clinic/visits/export/", "/clinic/visits/export/optimized/"),
    Page("orders", "/clinic/orders/", "/clinic/orders/optimized/"),
    Page("visit-form", "/clinic/visits/new/", "/clinic/visits/new/optimized/"),
    Page("api-visits", "/clinic/api/visits/?page=2", "/clinic/api/visits-optimized/?page=2"),
    Page("admin-visits", "/admin/clinic/visit/", "/clinic/admin-optimized/clinic/visit/", admin=True),
)
PAGES_BY_NAME = {p.name: p for p in PAGES}
