"""django-container-manager 1.0.14 as a baseline on the Docker workloads, from our side:
its own virtualenv and throwaway Django project under var/bench/ (it shares our app label,
so it can never be installed beside ours), its worker as a process, its client through
``dcm_driver.py``. The migration tests (tests/test_legacy_import.py) make their databases of
that package with it too.
"""

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, run_json

VENV = ROOT / "var" / "bench" / "dcm-venv"
PROJECT = ROOT / "var" / "bench" / "dcm-project"
PYTHON = VENV / "bin" / "python"
DRIVER = Path(__file__).resolve().parent / "dcm_driver.py"
REQUIREMENTS = ["django-container-manager==1.0.14", "psycopg[binary]"]

SETTINGS = """\
# Written by bench/baselines/dcm_venv.py: a throwaway project for django-container-manager.
import os
from urllib.parse import urlsplit

_url = urlsplit(os.environ["DCM_DATABASE_URL"])
SECRET_KEY = "bench-only"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "container_manager"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3", "NAME": _url.path[1:],
} if _url.scheme == "sqlite" else {
    "ENGINE": "django.db.backends.postgresql", "NAME": _url.path.lstrip("/"),
    "USER": _url.username or "", "PASSWORD": _url.password or "",
    "HOST": _url.hostname or "", "PORT": str(_url.port or ""),
}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CONTAINER_MANAGER = {"AUTO_PULL_IMAGES": False}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"handlers": [], "level": "ERROR"}}
"""


# Written once pip has installed everything: a virtualenv without it is unfinished.
READY = VENV / "ready"


def ensure_venv() -> None:
    """Create the virtualenv and write the project on first use (one process at a time)."""
    PROJECT.mkdir(parents=True, exist_ok=True)
    with open(PROJECT.parent / "dcm-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (PROJECT / "dcm_settings.py").write_text(SETTINGS)
        if READY.exists():
            return
        print(f"creating {VENV.relative_to(ROOT)} for django-container-manager (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
        print(f"  pip install {' '.join(REQUIREMENTS)}", flush=True)
        subprocess.run([PYTHON, "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
        READY.touch()


def _env(url: str) -> dict:
    return {
        **os.environ,
        "DCM_DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "dcm_settings",
        "PYTHONPATH": str(PROJECT),
    }


def run_script(url: str, script: Path, *args: str, timeout: float = 600) -> dict | None:
    """Run ``script`` with that package's Python and project on the database at ``url``
    (``postgres://...`` or ``sqlite:///path``); its JSON answer."""
    return run_json(
        [PYTHON, script, *args], _env(url), f"django-container-manager {script.name}", timeout
    )


def driver(url: str, command: str, *args: str, timeout: float = 600) -> dict | None:
    return run_script(url, DRIVER, command, *args, timeout=timeout)


def start_worker(url: str):
    """Its worker; the caller's first (untimed) job shows it is working: it keeps no
    worker row to wait for."""
    worker = subprocess.Popen([PYTHON, DRIVER, "worker"], env=_env(url), stdout=subprocess.DEVNULL)
    time.sleep(2)
    if worker.poll() is not None:
        raise RuntimeError("the django-container-manager worker exited at start")
    return worker
