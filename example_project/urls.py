from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]

try:
    from container_manager.http_api import api
except ImportError:  # its extra, django-ninja, is not installed
    pass
else:
    urlpatterns.append(path("api/", api.urls))
