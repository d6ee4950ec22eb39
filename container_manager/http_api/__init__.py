"""The HTTP API: jobs created, listed, shown, followed, cancelled and retried over HTTP,
with the permissions of the admin and the JSON of ``manage_container_job --json``.

It needs django-ninja (``pip install 'django-container-jobs[http]'``); include it in a
URLconf with ``path("api/", container_manager.http_api.api.urls)``. Without the extra
the rest of the app works as before, and importing this package says what to install.
"""

try:
    import ninja  # noqa: F401
except ImportError as error:
    raise ImportError(
        "container_manager.http_api needs django-ninja; install it with: "
        "pip install 'django-container-jobs[http]'"
    ) from error

from .endpoints import api  # noqa: E402 - only once django-ninja is known to be there

__all__ = ["api"]
