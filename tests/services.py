"""Private services for fault tests: a PostgreSQL cluster of the tests' own, which a test may
stop, start and restart under running workers.

Never the shared server on 127.0.0.1:5432 (other suites use it; see ../shared/TESTING.md,
"Private services for fault tests"): the private cluster is Debian's ``chaos`` cluster on port
5433, made with ``pg_createcluster`` the first time and reused on every later run. It trusts
every local connection (Unix socket, 127.0.0.1 and ::1), so its URLs carry no password, and its
``start.conf`` is ``manual``: nothing starts it at boot.

The ``private_postgres`` fixture leaves the cluster as it found it: a cluster that this session
started is stopped at the end of the session (the usual case), one that was already running is
left running. Needs root and Debian's postgresql-common (``pg_createcluster``, ``pg_ctlcluster``);
without them the tests that use it are skipped, or fail under CI=true.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import IN_CI

CLUSTER = "chaos"
PORT = 5433

PG_HBA = """\
# Written by tests/services.py: a private cluster for fault tests, reachable only from this
# machine, trusts every local user. Rewritten by every test session.
local   all   all                 trust
host    all   all   127.0.0.1/32  trust
host    all   all   ::1/128       trust
"""


def unavailable(message: str):
    """Skip, or fail under CI, when the private cluster cannot be had."""
    message = f"no private PostgreSQL cluster: {message}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()}"
        )
    return result


def _version_key(version: str):
    return tuple(int(part) for part in version.split("."))


def installed_major_versions() -> list[str]:
    """PostgreSQL major versions with server binaries, newest first.

    Read from /etc/postgresql (a version with clusters configured) and kept only where
    /usr/lib/postgresql/<version>/bin/postgres exists; a version installed but without any
    cluster yet is taken from /usr/lib/postgresql.
    """
    numeric = re.compile(r"^\d+(\.\d+)?$")

    def has_server(version: str) -> bool:
        return Path(f"/usr/lib/postgresql/{version}/bin/postgres").exists()

    configured = [
        p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir() and numeric.match(p.name)
    ]
    versions = [v for v in configured if has_server(v)]
    if not versions:
        versions = [
            p.name
            for p in Path("/usr/lib/postgresql").glob("*")
            if numeric.match(p.name) and has_server(p.name)
        ]
    return sorted(versions, key=_version_key, reverse=True)


def list_clusters() -> list[dict]:
    """``pg_lsclusters``, parsed: version, cluster, port, status (online/down), owner."""
    out = _run("pg_lsclusters", "--no-header").stdout
    clusters = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            version, cluster, port, status, owner = fields[:5]
            clusters.append(
                {
                    "version": version,
                    "cluster": cluster,
                    "port": int(port),
                    "status": status.split(",")[0],
                    "owner": owner,
                }
            )
    return clusters


class PrivatePostgres:
    """Debian's ``<version>/chaos`` cluster on port 5433, created if need be, trusting local users.

    ``restart()`` is a fast restart (``-m fast``): the server terminates every connection and
    aborts their transactions, as a failover or a maintenance restart would.
    """

    def __init__(self, name: str = CLUSTER, port: int = PORT, host: str = "127.0.0.1"):
        self.name = name
        self.port = port
        self.host = host
        self.version = None
        self.was_running = False

    # -- setup ---------------------------------------------------------------------------

    def ensure(self, timeout: float = 60):
        """Create the cluster if it does not exist, configure it, start it, wait for it."""
        missing = [
            tool
            for tool in ("pg_lsclusters", "pg_createcluster", "pg_ctlcluster")
            if not shutil.which(tool)
        ]
        if missing:
            unavailable(f"{', '.join(missing)} not found (Debian's postgresql-common)")
        if os.geteuid() != 0:
            unavailable("creating and starting a cluster needs root")

        clusters = list_clusters()
        mine = [c for c in clusters if c["cluster"] == self.name]
        if mine:
            cluster = max(mine, key=lambda c: _version_key(c["version"]))
            if cluster["port"] != self.port:
                unavailable(
                    f"cluster {cluster['version']}/{self.name} exists on port {cluster['port']}, "
                    f"not {self.port}; drop it (pg_dropcluster --stop {cluster['version']} "
                    f"{self.name}) and run again"
                )
            self.version = cluster["version"]
        else:
            squatter = [c for c in clusters if c["port"] == self.port]
            if squatter:
                other = squatter[0]
                unavailable(
                    f"port {self.port} belongs to cluster {other['version']}/{other['cluster']}"
                )
            versions = installed_major_versions()
            if not versions:
                unavailable("no PostgreSQL server found under /etc/postgresql")
            self.version = versions[0]
            _run(
                "pg_createcluster",
                self.version,
                self.name,
                "--port",
                str(self.port),
                "--start-conf",
                "manual",
            )

        self.configure()
        self.was_running = self.is_running()
        if self.was_running:
            # pg_hba.conf may just have been rewritten.
            _run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "reload")
        self.start(timeout=timeout)
        return self

    @property
    def config_dir(self) -> Path:
        return Path("/etc/postgresql") / self.version / self.name

    def configure(self):
        hba = self.config_dir / "pg_hba.conf"
        if not hba.exists() or hba.read_text() != PG_HBA:
            hba.write_text(PG_HBA)
            shutil.chown(hba, "postgres", "postgres")
            hba.chmod(0o640)
        start_conf = self.config_dir / "start.conf"
        if start_conf.exists():
            words = [
                line.strip()
                for line in start_conf.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
            if words != ["manual"]:
                start_conf.write_text("manual\n")

    # -- control -------------------------------------------------------------------------

    def _ctl(self, action: str, *args: str) -> subprocess.CompletedProcess:
        return _run(
            "pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action, *args
        )

    def is_running(self) -> bool:
        # pg_ctlcluster status: 0 running, 3 not running (pg_ctl's convention).
        status = _run(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            self.version,
            self.name,
            "status",
            check=False,
        )
        return status.returncode == 0

    def start(self, timeout: float = 60):
        """Start the cluster unless it is running, and wait until it accepts connections."""
        if not self.is_running():
            self._ctl("start")
        self.wait_ready(timeout)

    def stop(self):
        """Fast shutdown: every connection is terminated. Does nothing if it is down."""
        if self.is_running():
            self._ctl("stop", "-m", "fast")

    def restart(self, timeout: float = 60):
        """Fast restart (every connection terminated), then wait until it accepts connections."""
        self._ctl("restart", "-m", "fast")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60):
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"private cluster {self.version}/{self.name} does not accept "
                        f"connections on port {self.port} after {timeout} s: {error}; see "
                        f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log"
                    ) from error
                time.sleep(0.1)

    # -- databases -----------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@{self.host}:{self.port}/{dbname}"

    def fresh_database(self, name: str) -> str:
        """Drop ``name`` if it exists (disconnecting its sessions), create it, return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            db = sql.Identifier(name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
        return self.url(name)


@pytest.fixture(scope="session")
def private_postgres_cluster():
    """The private cluster for the whole session; stopped at the end if this session started
    it, left running if it was running already."""
    cluster = PrivatePostgres()
    cluster.ensure()  # skips (fails under CI) when it cannot be had; errors when it breaks
    yield cluster
    if cluster.was_running:
        cluster.start()
    else:
        cluster.stop()


@pytest.fixture
def private_postgres(private_postgres_cluster):
    """The private cluster, running and accepting connections (a test before may have stopped
    it)."""
    private_postgres_cluster.start()
    return private_postgres_cluster
