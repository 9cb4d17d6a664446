"""The clinic API: one viewset as it is usually first written, and its optimized twin."""

from __future__ import annotations

from rest_framework import pagination, routers, viewsets

from .models import Visit
from .serializers import VisitSerializer


class VisitPagination(pagination.PageNumberPagination):
    page_size = 20


class VisitViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Visit.objects.order_by("id")
    serializer_class = VisitSerializer
    pagination_class = VisitPagination


class VisitViewSetOptimized(VisitViewSet):
    queryset = (
        Visit.objects.select_related("patient__home_site", "clinician")
        .prefetch_related("tags", "orders")
        .order_by("id")
    )


router = routers.SimpleRouter()
router.register("visits", VisitViewSet, basename="api-visit")
router.register("visits-optimized", VisitViewSetOptimized, basename="api-visit-optimized")
