"""Procrastinate as a baseline, from our side: its own virtualenv (it must never share ours),
its workers as processes we can measure, and its client driven through
``procrastinate_driver.py`` run by that virtualenv's Python.

(Not named procrastinate.py: the driver runs from this folder, and would import this
module instead of the package.)
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, run_json, stop, wait_for

VENV = ROOT / "var" / "bench" / "procrastinate-venv"
PYTHON = VENV / "bin" / "python"
DRIVER = Path(__file__).resolve().parent / "procrastinate_driver.py"
# The release the issue measured against; the newest 3.x when that one cannot be had.
REQUIREMENTS = [
    ["procrastinate==3.10.*", "psycopg[binary]"],
    ["procrastinate>=3,<4", "psycopg[binary]"],
]


def version() -> str:
    return subprocess.run(
        [PYTHON, "-c", "import importlib.metadata as m; print(m.version('procrastinate'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def ensure_venv() -> str:
    """Create the virtualenv on first use; returns the Procrastinate version installed."""
    if PYTHON.exists():
        try:
            return version()
        except subprocess.CalledProcessError:
            pass  # a half-made virtualenv: install into it again
    print(f"creating {VENV.relative_to(ROOT)} for Procrastinate (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    for requirement in REQUIREMENTS:
        print(f"  pip install {' '.join(requirement)}", flush=True)
        done = subprocess.run([PYTHON, "-m", "pip", "install", "-q", *requirement])
        if done.returncode == 0:
            return version()
    raise RuntimeError("could not install Procrastinate into its virtualenv")


def _env(url: str, marks: Path) -> dict:
    return {**os.environ, "BENCH_PG_URL": url, "BENCH_MARKS": str(marks)}


def driver(url: str, marks: Path, command: str, *args: str, timeout: float = 600) -> dict | None:
    """Run one driver command; its JSON answer (or None for ``schema``)."""
    return run_json(
        [PYTHON, DRIVER, command, *args], _env(url, marks), f"procrastinate {command}", timeout
    )


def start_workers(url: str, marks: Path, count: int, concurrency: int = 4) -> list:
    """``count`` worker processes, returned once each has registered (its heartbeat row)."""
    import psycopg

    workers = [
        subprocess.Popen(
            [PYTHON, DRIVER, "worker", "--concurrency", str(concurrency)], env=_env(url, marks)
        )
        for _ in range(count)
    ]

    def registered():
        if any(worker.poll() is not None for worker in workers):
            raise RuntimeError("a Procrastinate worker exited at start")
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0]

    try:
        wait_for(lambda: registered() >= count, timeout=60, interval=0.1)
    except BaseException:
        stop(*workers)
        raise
    time.sleep(1.0)  # past start-up: idle, waiting on LISTEN
    return workers
