"""django-container-manager 1.0.14 as a baseline on the Docker workloads, from our side:
its own virtualenv and throwaway Django project under var/bench/ (it shares our app label,
so it can never be installed beside ours), its worker as a process, its client through
``dcm_driver.py``.
"""

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

_url = urlsplit(os.environ["BENCH_PG_URL"])
SECRET_KEY = "bench-only"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "container_manager"]
DATABASES = {"default": {
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


def ensure_venv() -> None:
    """Create the virtualenv and write the project on first use."""
    PROJECT.mkdir(parents=True, exist_ok=True)
    (PROJECT / "dcm_settings.py").write_text(SETTINGS)
    if PYTHON.exists():
        return
    print(f"creating {VENV.relative_to(ROOT)} for django-container-manager (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    print(f"  pip install {' '.join(REQUIREMENTS)}", flush=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)


def _env(url: str) -> dict:
    return {
        **os.environ,
        "BENCH_PG_URL": url,
        "DJANGO_SETTINGS_MODULE": "dcm_settings",
        "PYTHONPATH": str(PROJECT),
    }


def driver(url: str, command: str, *args: str, timeout: float = 600) -> dict | None:
    return run_json(
        [PYTHON, DRIVER, command, *args],
        _env(url),
        f"django-container-manager {command}",
        timeout,
    )


def start_worker(url: str):
    """Its worker; the caller's first (untimed) job shows it is working: it keeps no
    worker row to wait for."""
    worker = subprocess.Popen([PYTHON, DRIVER, "worker"], env=_env(url), stdout=subprocess.DEVNULL)
    time.sleep(2)
    if worker.poll() is not None:
        raise RuntimeError("the django-container-manager worker exited at start")
    return worker
