from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Prometheus scrapes the whole cluster's metrics here (README, Operations).
    path("metrics/", include("container_manager.metrics")),
]

try:
    from container_manager.http_api import api
except ImportError:  # its extra, django-ninja, is not installed
    pass
else:
    urlpatterns.append(path("api/", api.urls))
