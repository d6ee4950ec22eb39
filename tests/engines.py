"""Private Docker engines for tests that need one of their own: behind TLS, or one a test
may stop and start again. Each has its own data root, exec root, pid file and socket."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest
import requests
from django.db import connection

from .conftest import IN_CI, TEST_IMAGE

# Tests that break or juggle private engines under real worker processes: minutes of real
# time, so they run once per test command, in the PostgreSQL pass (the database production
# uses).
PRIVATE_ENGINE_TESTS = [
    pytest.mark.docker,
    pytest.mark.processes,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="runs in the PostgreSQL pass only"
    ),
]


def require_dockerd():
    if not (shutil.which("dockerd") and os.geteuid() == 0):
        message = "a private Docker engine needs dockerd and root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


class PrivateEngine:
    def __init__(self, *, url=None, extra_args=(), tls=None):
        # Short paths: containerd's sockets live under the exec root.
        self.root = Path(tempfile.mkdtemp(prefix="cm-engine-", dir="/tmp"))
        self.url = url or f"unix://{self.root / 'docker.sock'}"
        self.extra_args = list(extra_args)
        self.tls = tls
        self.daemon = None

    def start(self, timeout=30):
        log = (self.root / "dockerd.log").open("ab")
        self.daemon = subprocess.Popen(
            [
                "dockerd",
                "-H",
                self.url,
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'dockerd.pid'}",
                "--storage-driver=vfs",
                "--iptables=false",
                "--bridge=none",
                *self.extra_args,
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = docker.APIClient(
                    base_url=self.url, tls=self.tls, version="1.24", timeout=2
                )
                client.trust_env = False
                client.ping()
                client.close()
                return
            except (docker.errors.DockerException, requests.RequestException) as error:
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"private engine did not start ({error}); see {self.root}/dockerd.log"
                    )
                time.sleep(0.2)

    def stop(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def load_test_image(self, source: docker.DockerClient):
        """Copy the test image from ``source``: there is no registry to pull it from."""
        client = docker.DockerClient(base_url=self.url, tls=self.tls, timeout=30)
        # Saved under its own name: the image may carry other tags too (a registry's).
        client.images.load(b"".join(source.images.get(TEST_IMAGE).save(named=TEST_IMAGE)))
        client.close()

    def destroy(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRegistry:
    """Debian's docker-registry on 127.0.0.1 with basic auth (htpasswd), for pull tests.

    Engines treat registries on 127.0.0.0/8 as insecure by default: no TLS is needed.
    """

    def __init__(self, username="cm-user", password="cm-registry-pass-0001"):
        for tool in ("docker-registry", "htpasswd"):
            if not shutil.which(tool):
                message = f"a private registry needs {tool} (scripts/docker-engine.sh installs it)"
                if IN_CI:
                    pytest.fail(message)
                pytest.skip(message)
        self.username, self.password = username, password
        self.root = Path(tempfile.mkdtemp(prefix="cm-registry-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout=30):
        htpasswd = subprocess.run(
            ["htpasswd", "-Bbn", self.username, self.password],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (self.root / "htpasswd").write_text(htpasswd)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.address}\n"
            f"auth:\n  htpasswd:\n    realm: cm-tests\n    path: {self.root / 'htpasswd'}\n"
        )
        log = (self.root / "registry.log").open("ab")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"http://{self.address}/v2/", timeout=1).status_code == 401:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"private registry did not start; see {self.root}/registry.log")
            time.sleep(0.1)

    def push(self, client: docker.DockerClient, source: str, repository: str) -> str:
        """Push ``source`` as ``repository:latest`` and drop the local tag; the reference."""
        reference = f"{self.address}/{repository}:latest"
        client.images.get(source).tag(reference)
        auth = {"username": self.username, "password": self.password}
        for line in client.images.push(reference, auth_config=auth, stream=True, decode=True):
            if "error" in line:
                pytest.fail(f"push to the private registry failed: {line['error']}")
        client.images.remove(reference)
        return reference

    def destroy(self, client: docker.DockerClient | None = None):
        """Stop the registry; with ``client``, also untag what that engine pulled from it."""
        if client is not None:
            for image in client.images.list():
                for tag in image.tags:
                    if tag.startswith(f"{self.address}/"):
                        client.images.remove(tag)
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
