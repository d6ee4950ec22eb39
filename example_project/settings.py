"""Settings for the example project that hosts container_manager.

SQLite by default; set DATABASE_URL (sqlite:///path or postgres://user@host:port/db) to use
another database.
"""

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "container_manager",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "example_project.wsgi.application"


def database_from_url(url: str) -> dict:
    """Translate a DATABASE_URL into a Django DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        path = unquote(parsed.path[1:] if parsed.path.startswith("/") else parsed.path)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path or str(BASE_DIR / "db.sqlite3"),
            # Workers write from several threads and processes: wait for the lock instead of
            # failing, and take the write lock up front so two writers never deadlock on upgrade.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
            # A file, not shared-cache memory: workers run jobs in threads, and a shared-cache
            # in-memory database answers "table is locked" instead of waiting.
            "TEST": {
                "NAME": os.environ.get("SQLITE_TEST_NAME")
                or os.path.join(
                    tempfile.gettempdir(), f"container_manager_test_{os.getpid()}.sqlite3"
                )
            },
        }
    if parsed.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            # One test database per test run: two runs on one server must not drop each
            # other's database.
            "TEST": {"NAME": f"test_{unquote(parsed.path.lstrip('/'))}_{os.getpid()}"},
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parsed.scheme!r} (use sqlite or postgres)")


DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
    )
}

# container_manager settings (see the README); the example project also takes them as JSON
# from the environment, which is how the tests tune the worker processes they start.
CONTAINER_MANAGER = json.loads(os.environ.get("CONTAINER_MANAGER_SETTINGS") or "{}")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        # JSON lines for log shippers (README, Operations): CONTAINER_MANAGER_LOG_FORMAT=json.
        "json": {"()": "container_manager.logs.JSONFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": os.environ.get("CONTAINER_MANAGER_LOG_FORMAT", "plain"),
        }
    },
    "loggers": {
        "container_manager": {
            "handlers": ["console"],
            "level": os.environ.get("CONTAINER_MANAGER_LOG_LEVEL", "INFO"),
        }
    },
}
