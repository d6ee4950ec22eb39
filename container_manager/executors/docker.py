"""Run jobs as containers on a Docker engine, local (unix socket) or remote (``tcp://``, TLS).

The execution id is the container's full id. Every container carries labels linking it to its
job (``container_manager.job_id``, ``.attempt``, ``.host``, ``.managed="true"``), so what a
worker started can always be found again with ``docker ps --filter label=...``.

Host fields: ``connection_string`` (blank: ``DOCKER_HOST`` and friends, as ``docker.from_env``
reads them). TLS is used when any of ``tls_ca_cert`` / ``tls_client_cert`` /
``tls_client_key`` is set (a client certificate needs both of its files); ``tls_verify`` says
whether the engine's certificate is checked, against ``tls_ca_cert`` or else the default CAs.
The CA configured on the host is the one used: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` and
proxy variables in the environment are ignored for engine connections (``requests`` would
otherwise let them replace the configured CA, and even turn ``tls_verify=False`` back on).

A ``tcp://`` engine at an address that is not loopback (127.0.0.0/8, ::1, localhost) is only
used with TLS that checks the engine's certificate, unless the host has ``allow_insecure``:
``validate_host`` says so when the host is saved through validation, and connecting refuses it
whatever saved the host (a blank connection string taken from ``DOCKER_HOST`` included).

Every container is confined as ``policy.confinement`` says (``confinement_options`` maps it):
all capabilities dropped but ``DEFAULT_CAPABILITIES`` and those the job may add,
no-new-privileges, ``PIDS_LIMIT``, and the user, read-only root, bind mounts and host
namespaces the job asked for and the container policy allowed.

``executor_config`` options:

- ``pull_policy``: ``"never"``, ``"if-missing"`` (default) or ``"always"``.
- ``auto_remove``: let the engine delete the container as soon as it exits (default False).
  The exit code is still known when this executor saw the container end, but its output is
  lost; by default containers are removed by ``cleanup`` after their output is harvested.
- ``network``: the container's network mode (``"none"``, a network name...); a job with
  ``host_network`` gets ``"host"`` instead.
- ``timeout``: seconds to wait for an answer from the engine (default 60).

Status: a container that was created but never started (a worker died between the two calls)
counts as ended, since nothing will ever start it; its harvest reports that it never ran.

Usage: one daemon thread per execution reads the engine's stats stream while the container
runs and keeps the peak memory (the cgroup's own high-water mark where the engine reports it,
i.e. cgroup v1; else the highest usage seen) and the CPU time. The engine samples about once a
second, so an execution shorter than that may report no usage at all (None).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import threading
import time
from contextlib import closing
from urllib.parse import quote, urlsplit

import docker
import docker.errors
import docker.tls
import docker.types
import requests
import urllib3.exceptions
from django.core.exceptions import ValidationError

from .. import policy
from ..conf import setting
from ..output import CappedOutput
from .base import (
    EXITED,
    NOT_FOUND,
    RUNNING,
    BaseExecutor,
    ExecutorError,
    ExecutorUnavailable,
    Health,
    LaunchError,
    Outcome,
)

logger = logging.getLogger(__name__)

PULL_POLICIES = ("never", "if-missing", "always")
DEFAULT_PULL_POLICY = "if-missing"
DEFAULT_TIMEOUT = 60
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# A container killed by SIGKILL (the OOM killer's signal) exits with 128 + 9.
SIGKILL_EXIT_CODE = 137
MIB = 1024 * 1024

LABEL_PREFIX = "container_manager."
MANAGED_LABEL = f"{LABEL_PREFIX}managed"

# Container states that still have (or will have again) running processes.
LIVE_STATES = {"running", "restarting", "paused"}
# What the engine puts in a stats frame for a container that is not running.
ZERO_TIME = "0001-01-01T00:00:00Z"
# What a call to the engine can raise besides our own errors.
ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)
# Log frames' stream numbers, and how much of a log is read at a time.
STDOUT, STDERR = 1, 2
READ_BLOCK = 256 * 1024
# Log files the engine keeps per container (see log_config), and at most how many bytes the
# local driver adds to each entry (line) it stores: length prefix and suffix, stream, time.
LOG_FILES = 2
LOG_ENTRY_OVERHEAD = 40


def _check_timeout(value):
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


CONFIG_CHECKS = {
    "pull_policy": (
        lambda v: v in PULL_POLICIES,
        f"must be one of {', '.join(repr(p) for p in PULL_POLICIES)}",
    ),
    "auto_remove": (lambda v: isinstance(v, bool), "must be true or false"),
    "network": (lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty string"),
    "timeout": (_check_timeout, "must be a number of seconds greater than 0"),
}


def log_config() -> docker.types.LogConfig:
    """An engine-side bound on a container's log, so a chatty job cannot fill the engine's disk.

    The engine's ``local`` driver (raw bytes, a few dozen bytes of framing per line, unlike
    json-file's escaping) keeps at most two files of four times ``MAX_OUTPUT_BYTES``: room for
    what is kept of both streams, and a bound on what harvesting reads. Beyond that the engine
    drops the oldest output, and the harvested output says it may have.
    """
    return docker.types.LogConfig(
        type="local",
        config={
            "max-size": str(log_file_bytes()),
            "max-file": str(LOG_FILES),
            "compress": "false",
        },
    )


def log_file_bytes() -> int:
    return max(4 * setting("MAX_OUTPUT_BYTES"), MIB)


def confinement_options(job, network: str | None = None) -> dict:
    """The container-creation options that confine ``job`` (see ``policy.confinement``).

    ``network`` is the host's configured network mode, used unless the job has the host's.
    """
    confined = policy.confinement(job)
    options = {
        "security_opt": ["no-new-privileges:true"] if confined.no_new_privileges else [],
        "cap_drop": list(confined.drop_capabilities),
        "cap_add": list(confined.add_capabilities),
        "pids_limit": confined.pids_limit,
        "read_only": confined.read_only_root,
        "user": confined.user,
        "privileged": confined.privileged,
        "mounts": [
            docker.types.Mount(
                target=mount.target, source=mount.source, type="bind", read_only=mount.read_only
            )
            for mount in confined.mounts
        ],
    }
    if confined.host_network:
        options["network_mode"] = "host"
    elif network:
        options["network_mode"] = network
    if confined.host_pid:
        options["pid_mode"] = "host"
    return options


# -- remote engines ----------------------------------------------------------------------------


def _is_loopback(hostname: str | None) -> bool:
    if not hostname:
        return True  # "tcp://:2375": the SDK connects to 127.0.0.1
    if hostname.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return False  # a name: it could resolve anywhere
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def insecure_connection(url: str | None, tls: bool, verify: bool) -> str | None:
    """What is unsafe about talking to the engine at ``url``, or None if nothing is.

    Unsafe: TCP to anything but a loopback address (127.0.0.0/8, ::1, localhost) without
    TLS, or with TLS that does not check the engine's certificate. Unix sockets, named pipes
    and ``ssh://`` are not network connections of this kind.
    """
    if not url:
        return None
    scheme, separator, _ = url.strip().partition("://")
    scheme = scheme.lower() if separator else "tcp"  # "host:2375" is TCP to the SDK
    if scheme not in ("tcp", "http", "https"):
        return None
    try:
        hostname = urlsplit(url.strip() if separator else f"tcp://{url.strip()}").hostname
    except ValueError:
        hostname = None
    if _is_loopback(hostname):
        return None
    if not tls and scheme != "https":
        return "plain TCP, without TLS"
    if tls and not verify:
        return "TLS that does not check the engine's certificate (tls_verify is off)"
    return None


def insecure_message(host, url: str, problem: str) -> str:
    return (
        f"Docker host '{host.name}': {url} is {problem}, to an address that is not loopback: "
        "anyone who can reach that port, or sit between here and there, controls the engine "
        "and sees every job's environment. Connect with TLS (tls_ca_cert, tls_client_cert and "
        "tls_client_key, with tls_verify on, to an engine started with --tlsverify) or over "
        "ssh://; or, only on a network you trust, turn on allow_insecure for this host."
    )


class _EnvIndependentAPIClient(docker.APIClient):
    """An APIClient whose HTTP session never takes settings from the environment.

    ``requests`` lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace the CA a session was
    given, which breaks an engine's TLS with its own CA. ``trust_env`` is fixed to False
    before the first request (the API version negotiation happens inside ``__init__``).
    """

    @property
    def trust_env(self):
        return False

    @trust_env.setter
    def trust_env(self, value):
        pass


class _Client(docker.DockerClient):
    def __init__(self, **kwargs):
        self.api = _EnvIndependentAPIClient(**kwargs)


def _causes(exc):
    """``exc`` and everything it wraps (causes, contexts, urllib3 reasons, exception args)."""
    seen = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(current.args)
        pending.extend(e for e in linked if isinstance(e, BaseException))


def _is_timeout(exc):
    # Not urllib3's TimeoutError: its NewConnectionError (a refused connection) is one.
    return any(
        isinstance(e, requests.exceptions.Timeout | urllib3.exceptions.ReadTimeoutError)
        or (isinstance(e, TimeoutError) and e.errno is None)
        for e in _causes(exc)
    )


def _reason(exc):
    """The most telling short reason for a connection failure."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno is not None and cause.strerror:
            reason = cause.strerror
            if isinstance(cause, PermissionError):
                reason += " (is this user allowed to use the Docker socket?)"
            return reason
    return str(exc)


class _UsageSampler:
    """Reads one container's stats stream in a daemon thread and keeps peak memory and CPU."""

    def __init__(self, api, container_id):
        self.api = api
        self.container_id = container_id
        self.peak_memory_bytes = None
        self.cpu_seconds = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"docker-stats-{container_id[:12]}", daemon=True
        )

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        # Seen at the next frame (about a second); removing the container ends the stream.
        self.stopped.set()

    def _run(self):
        try:
            for frame in self.api.stats(self.container_id, stream=True, decode=True):
                if self.stopped.is_set():
                    break
                if not self._record(frame) and not self._still_running():
                    # The engine keeps sending empty frames for an ended container.
                    break
        except Exception as error:  # noqa: BLE001 - a sampler must never take a worker down
            logger.debug("stats of container %s: %s", self.container_id[:12], error)
        finally:
            self.stopped.set()

    def _record(self, frame):
        if not isinstance(frame, dict) or frame.get("read", ZERO_TIME) == ZERO_TIME:
            return False
        memory = frame.get("memory_stats") or {}
        # cgroup v1: the cgroup's own high-water mark. cgroup v2 engines report usage only.
        peak = max(memory.get("max_usage") or 0, memory.get("usage") or 0)
        if peak:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, peak)
        total = ((frame.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if total:
            self.cpu_seconds = max(self.cpu_seconds or 0.0, total / 1e9)
        return bool(peak or total)

    def _still_running(self):
        try:
            return bool(self.api.inspect_container(self.container_id)["State"]["Running"])
        except Exception:  # noqa: BLE001 - gone or unreachable: either way, stop sampling
            return False


class DockerExecutor(BaseExecutor):
    type_name = "docker"

    def __init__(self, host):
        super().__init__(host)
        self._client = None
        self._client_lock = threading.Lock()
        self._samplers: dict[str, _UsageSampler] = {}
        self._exit_codes: dict[str, int] = {}
        # Executions this executor stopped itself: a SIGKILL there is ours, not the kernel's.
        self._stopped: set[str] = set()
        self._state_lock = threading.Lock()

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def validate_config(cls, config):
        if not isinstance(config, dict):
            raise ValidationError("docker executor_config must be a JSON object")
        for key, value in config.items():
            if key not in CONFIG_CHECKS:
                known = ", ".join(sorted(CONFIG_CHECKS))
                raise ValidationError(f"unknown docker option {key!r} (known: {known})")
            check, requirement = CONFIG_CHECKS[key]
            if not check(value):
                raise ValidationError(f"docker option {key!r} {requirement}, not {value!r}")
        network = config.get("network", "")
        if network == "host" or network.startswith("container:"):
            # Sharing another network namespace is the host_network loosening by another
            # name: the policy decides, per job, through the job's host_network switch.
            raise ValidationError(
                f"docker option 'network' cannot be {network!r}: a job asks for the host's "
                "network with host_network, which the container policy must allow"
            )

    @classmethod
    def validate_host(cls, host):
        errors = {}
        if host.connection_string:
            try:
                docker.utils.parse_host(host.connection_string)
            except docker.errors.DockerException as error:
                errors["connection_string"] = (
                    f"{error}; use unix:///path/docker.sock, tcp://host:port or ssh://user@host"
                )
        if bool(host.tls_client_cert) != bool(host.tls_client_key):
            missing = "tls_client_key" if host.tls_client_cert else "tls_client_cert"
            errors[missing] = "a client certificate needs both tls_client_cert and tls_client_key"
        if host.tls_ca_cert and not host.tls_verify:
            errors["tls_verify"] = (
                "is off, so tls_ca_cert would be ignored and the engine's certificate not "
                "checked; turn tls_verify on, or clear tls_ca_cert"
            )
        tls = any((host.tls_ca_cert, host.tls_client_cert, host.tls_client_key))
        problem = insecure_connection(host.connection_string, tls, host.tls_verify)
        if problem and not host.allow_insecure and "connection_string" not in errors:
            errors["connection_string"] = insecure_message(host, host.connection_string, problem)
        if errors:
            raise ValidationError(errors)

    @property
    def connection(self) -> str:
        """Where the engine is, as shown in messages."""
        return self.host.connection_string or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    @property
    def api_timeout(self) -> float:
        return self.config.get("timeout", DEFAULT_TIMEOUT)

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, created (and the engine first contacted) on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def _connect(self):
        try:
            self.validate_config(self.config)
        except ValidationError as error:
            raise ExecutorUnavailable(
                f"Docker host '{self.host.name}' has an unusable executor_config: "
                + "; ".join(error.messages)
            ) from None
        host = self.host
        tls_files = (host.tls_ca_cert, host.tls_client_cert, host.tls_client_key)
        try:
            if not host.connection_string and not any(tls_files):
                kwargs = docker.utils.kwargs_from_env()
            else:
                kwargs = {"base_url": host.connection_string or None}
                if kwargs["base_url"] is None:
                    kwargs["base_url"] = docker.utils.kwargs_from_env().get("base_url")
                if any(tls_files):
                    kwargs["tls"] = self._tls_config()
            tls = kwargs.get("tls")
            problem = insecure_connection(
                kwargs.get("base_url"), bool(tls), getattr(tls, "verify", True)
            )
            if problem and not host.allow_insecure:
                raise ExecutorUnavailable(insecure_message(host, kwargs["base_url"], problem))
            return _Client(timeout=self.api_timeout, **kwargs)
        except docker.errors.TLSParameterError as error:
            raise ExecutorUnavailable(
                f"Docker host '{host.name}' has unusable TLS settings: {error}"
            ) from error
        except ENGINE_ERRORS as error:
            raise self._unavailable(error, "connecting") from error

    def _tls_config(self):
        host = self.host
        if bool(host.tls_client_cert) != bool(host.tls_client_key):
            raise ExecutorUnavailable(
                f"Docker host '{host.name}' has unusable TLS settings: "
                "a client certificate needs both tls_client_cert and tls_client_key"
            )
        client_cert = (host.tls_client_cert, host.tls_client_key) if host.tls_client_cert else None
        return docker.tls.TLSConfig(
            client_cert=client_cert,
            ca_cert=host.tls_ca_cert or None,
            verify=host.tls_verify,
        )

    # -- error translation ------------------------------------------------------------

    def _unavailable(self, error, doing):
        where = f"Docker engine '{self.host.name}' at {self.connection}"
        if _is_timeout(error):
            return ExecutorUnavailable(
                f"{where} did not answer within {self.api_timeout:g} s while {doing}"
            )
        return ExecutorUnavailable(f"{where} is unreachable: {_reason(error)}")

    def _error(self, error: Exception, doing: str, cls=ExecutorError) -> ExecutorError:
        """Translate an SDK or transport error into an ExecutorError worth reading alone."""
        if isinstance(error, docker.errors.APIError):
            explanation = error.explanation or str(error)
            if isinstance(explanation, bytes):
                explanation = explanation.decode("utf-8", "replace")
            return cls(f"{doing} failed on Docker host '{self.host.name}': {explanation}")
        return self._unavailable(error, doing)

    # -- launching --------------------------------------------------------------------

    def start(self, job):
        client = self.client
        self._ensure_image(job.image)
        labels = {
            f"{LABEL_PREFIX}job_id": str(job.pk),
            f"{LABEL_PREFIX}attempt": str(job.attempts),
            f"{LABEL_PREFIX}host": self.host.name,
            MANAGED_LABEL: "true",
        }
        options = {
            "command": list(job.command) or None,
            "environment": job.get_environment(),
            "working_dir": job.working_dir or None,
            "labels": labels,
            # One name per attempt: the engine refuses a second container of the same
            # attempt, which makes a launch tried again after a lost answer idempotent.
            "name": f"cm-{job.pk}-{job.attempts}",
            "auto_remove": self.config.get("auto_remove", False),
            "log_config": log_config(),
        }
        if job.memory_limit:
            # Swap limit equal to the memory limit: over the limit means killed, not swapped.
            options["mem_limit"] = options["memswap_limit"] = job.memory_limit * MIB
        if job.cpu_limit:
            options["nano_cpus"] = int(round(job.cpu_limit * 1e9))
        options.update(confinement_options(job, self.config.get("network")))
        try:
            container = client.containers.create(job.image, **options)
        except docker.errors.APIError as error:
            if error.status_code != 409:
                raise self._launch_error(error, job) from error
            # This attempt has a container already: an earlier launch's answer was lost.
            if existing := self.find_execution(job):
                logger.info("job %s: attempt %s runs already", job.pk, job.attempts)
                self._start_sampler(existing)
                return existing
            container = self._create(job, options)  # find_execution removed an unstarted one
        except ENGINE_ERRORS as error:
            raise self._launch_error(error, job) from error
        try:
            container.start()
        except ENGINE_ERRORS as error:
            translated = self._error(
                error, f"starting the container for '{job.image}'", LaunchError
            )
            try:
                container.remove(force=True)
            except Exception as remove_error:  # noqa: BLE001 - report the start failure
                logger.warning(
                    "could not remove unstarted container %s: %s", container.id, remove_error
                )
            raise translated from error
        self._start_sampler(container.id)
        return container.id

    def _create(self, job, options):
        try:
            return self.client.containers.create(job.image, **options)
        except ENGINE_ERRORS as error:
            raise self._launch_error(error, job) from error

    def _launch_error(self, error, job):
        if isinstance(error, docker.errors.ImageNotFound):
            return LaunchError(
                f"image '{job.image}' is not present on Docker host '{self.host.name}' "
                f"({error.explanation})"
            )
        return self._error(error, f"creating a container from '{job.image}'", LaunchError)

    def find_execution(self, job):
        """The container started for the job's current attempt, found by its labels.

        One that was created but never started is removed instead: the job can then be
        queued again as if nothing had happened.
        """
        filters = {
            "label": [f"{LABEL_PREFIX}job_id={job.pk}", f"{LABEL_PREFIX}attempt={job.attempts}"]
        }
        try:
            found = self.api.containers(all=True, filters=filters)
            for container in found:
                if container["State"] == "created":
                    self.api.remove_container(container["Id"], force=True)
        except ENGINE_ERRORS as error:
            raise self._error(error, f"looking up the container of job {job.pk}") from error
        started = [c["Id"] for c in found if c["State"] != "created"]
        return started[0] if started else None

    def list_executions(self):
        filters = {"label": [f"{MANAGED_LABEL}=true", f"{LABEL_PREFIX}host={self.host.name}"]}
        try:
            found = self.api.containers(all=True, filters=filters)
        except ENGINE_ERRORS as error:
            raise self._error(error, "listing containers") from error
        return {c["Id"]: c["Labels"].get(f"{LABEL_PREFIX}job_id", "") for c in found}

    def _ensure_image(self, image):
        policy = self.config.get("pull_policy", DEFAULT_PULL_POLICY)
        if policy != "always":
            try:
                self.api.inspect_image(image)
                return
            except docker.errors.NotFound:
                pass
            except ENGINE_ERRORS as error:
                raise self._error(error, f"looking up image '{image}'", LaunchError) from error
            if policy == "never":
                raise LaunchError(
                    f"image '{image}' is not present on host '{self.host.name}' "
                    "and pull_policy is 'never'"
                )
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as error:
            reason = error.explanation or str(error)
            if policy == "always":
                message = (
                    f"pulling image '{image}' on host '{self.host.name}' failed "
                    f"(pull_policy is 'always'): {reason}"
                )
            else:
                message = (
                    f"image '{image}' is not present on host '{self.host.name}' "
                    f"and pulling it failed: {reason}"
                )
            raise LaunchError(message) from error
        except ENGINE_ERRORS as error:
            raise self._error(error, f"pulling image '{image}'", LaunchError) from error

    def _start_sampler(self, container_id):
        with self._state_lock:
            if container_id in self._samplers:
                return
            self._samplers[container_id] = _UsageSampler(self.api, container_id)
            sampler = self._samplers[container_id]
        try:
            sampler.start()
        except RuntimeError as error:  # cannot start a thread (interpreter shutting down...)
            logger.warning("no usage sampling for container %s: %s", container_id[:12], error)

    # -- following an execution -------------------------------------------------------

    def _inspect(self, execution_id, doing):
        """The container's attributes, or None if it does not exist."""
        try:
            return self.api.inspect_container(execution_id)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as error:
            raise self._error(error, doing) from error

    def status(self, execution_id):
        attrs = self._inspect(execution_id, f"inspecting container {execution_id[:12]}")
        if attrs is None:
            return NOT_FOUND
        return RUNNING if attrs["State"]["Status"] in LIVE_STATES else EXITED

    def wait(self, execution_id, timeout):
        if timeout is not None and timeout <= 0:
            return self.status(execution_id) != RUNNING
        request_timeout = None if timeout is None or math.isinf(timeout) else timeout
        with self._state_lock:
            attached = execution_id in self._samplers
        # Waiting on a container this executor did not launch (a restarted worker): sample it.
        if not attached and self.status(execution_id) == RUNNING:
            self._start_sampler(execution_id)
        try:
            result = self.api.wait(execution_id, timeout=request_timeout)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as error:
            raise self._error(error, f"waiting for container {execution_id[:12]}") from error
        except ENGINE_ERRORS:
            # A still-running container makes the wait request time out (as a ConnectionError
            # on a unix socket). Asking again tells that apart from an engine that went away:
            # status() raises ExecutorUnavailable then.
            return self.status(execution_id) != RUNNING
        if isinstance(result, dict) and isinstance(result.get("StatusCode"), int):
            with self._state_lock:
                self._exit_codes[execution_id] = result["StatusCode"]
        return True

    def harvest(self, execution_id, deadline=None):
        attrs = self._inspect(execution_id, f"inspecting container {execution_id[:12]}")
        with self._state_lock:
            sampler = self._samplers.get(execution_id)
            seen_exit_code = self._exit_codes.get(execution_id)
        usage = {
            "peak_memory_bytes": sampler.peak_memory_bytes if sampler else None,
            "cpu_seconds": sampler.cpu_seconds if sampler else None,
        }
        auto_removed = self.config.get("auto_remove", False)
        gone = ExecutorError(f"container {execution_id} no longer exists on host {self.host.name}")
        if attrs is None:
            if auto_removed and seen_exit_code is not None:
                # The engine removed it after this executor saw it exit; its output went too.
                return Outcome(exit_code=seen_exit_code, **usage)
            raise gone
        state = attrs["State"]
        if state["Status"] in LIVE_STATES:
            raise ExecutorError(
                f"container {execution_id[:12]} on host {self.host.name} is still "
                f"{state['Status']}; it can only be harvested once it has ended"
            )
        errors = []
        if state["Status"] == "created":
            errors.append(f"container {execution_id[:12]} was created but never started")
            exit_code = None
        else:
            exit_code = state.get("ExitCode")
        # The engine flags any OOM kill in the container, not only of its main process.
        oom_killed = bool(state.get("OOMKilled"))

        if oom_killed:
            limit = (attrs.get("HostConfig") or {}).get("Memory") or 0
            limit_text = f"limit {limit // MIB} MB" if limit else "no limit was set"
            if exit_code == 0:
                errors.append(
                    f"a process in the container was killed for running out of memory "
                    f"({limit_text}); the container went on and exited with code 0"
                )
            else:
                errors.append(f"container was killed for running out of memory ({limit_text})")
        elif (
            exit_code == SIGKILL_EXIT_CODE
            and attrs["HostConfig"].get("Memory")
            and execution_id not in self._stopped
        ):
            # Several containers OOM-killed at once, the engine sometimes misses the event
            # and leaves OOMKilled false: say what is most likely, without claiming it.
            limit = attrs["HostConfig"]["Memory"] // MIB
            errors.append(
                f"container was killed (SIGKILL, exit code 137) with a memory limit of "
                f"{limit} MB: most likely it ran out of memory"
            )
        if state.get("Error"):
            errors.append(f"Docker reported: {state['Error']}")
        try:
            stdout, stderr = self._read_output(
                execution_id, tty=attrs["Config"].get("Tty"), deadline=deadline
            )
        except docker.errors.NotFound:
            if not auto_removed:
                raise gone from None
            stdout = stderr = CappedOutput()
        except docker.errors.APIError as error:
            # 409 "dead or marked for removal": auto_remove is removing it right now.
            if not (auto_removed and error.status_code == 409):
                raise self._error(error, f"reading the output of {execution_id[:12]}") from error
            stdout = stderr = CappedOutput()
        except ENGINE_ERRORS as error:
            raise self._error(error, f"reading the output of {execution_id[:12]}") from error
        return Outcome(
            exit_code=exit_code,
            stdout=stdout.text(),
            stderr=stderr.text(),
            oom_killed=oom_killed,
            error="; ".join(errors),
            **usage,
        )

    def _read_output(self, execution_id, tty=False, deadline=None):
        """stdout and stderr from one logs request, each kept within the output cap.

        The engine sends a frame (8-byte header, then the bytes) per line written, and reads
        its whole log file for every request: so both streams are read at once, in large
        blocks, and split here by each frame's stream byte. Nothing is held beyond the caps,
        and reading stops at ``deadline`` (what was read is kept, marked as cut).
        """
        api = self.api
        url = f"{api.base_url}/v{api.api_version}/containers/{quote(execution_id, safe='')}/logs"
        read_timeout = api.timeout
        if deadline is not None:
            read_timeout = max(1.0, min(read_timeout, deadline - time.monotonic()))
        response = api.get(
            url,
            params={"stdout": 1, "stderr": 1, "follow": 0},
            stream=True,
            timeout=(api.timeout, read_timeout),
        )
        outputs = {STDOUT: CappedOutput(), STDERR: CappedOutput()}

        def blocks():
            while block := response.raw.read(READ_BLOCK):
                yield block
                if deadline is not None and time.monotonic() > deadline:
                    for output in outputs.values():
                        output.cut_short("reading it took longer than the job's time allowed")
                    return

        with closing(response):
            try:
                response.raise_for_status()
            except requests.HTTPError as error:
                docker.errors.create_api_error_from_http_exception(error)
            if tty:  # one raw stream, no frames
                for block in blocks():
                    outputs[STDOUT].feed(block)
                return outputs[STDOUT], outputs[STDERR]
            pending = bytearray()
            entries = 0
            for block in blocks():
                pending += block
                parts = {STDOUT: [], STDERR: []}
                position, available = 0, len(pending)
                while available - position >= 8:
                    end = position + 8 + int.from_bytes(pending[position + 4 : position + 8], "big")
                    if end > available:
                        break
                    # 1 is stdout, 2 stderr; 0 (stdin, never sent for a log) goes with stdout.
                    stream = STDERR if pending[position] == STDERR else STDOUT
                    parts[stream].append(pending[position + 8 : end])
                    position = end
                    entries += 1
                del pending[:position]
                for stream, chunks in parts.items():
                    if chunks:
                        outputs[stream].feed(b"".join(chunks))
        if self._may_have_rotated(outputs, entries):
            for output in outputs.values():
                if output.total:
                    output.lost_before(
                        "the engine keeps a bounded log per container "
                        f"({LOG_FILES} files of {log_file_bytes():,} bytes), so older output "
                        "may have been dropped"
                    )
        return outputs[STDOUT], outputs[STDERR]

    @staticmethod
    def _may_have_rotated(outputs, entries) -> bool:
        """Whether the engine may have dropped the oldest part of this log.

        It only drops once a log file has filled up, so a log that cannot have filled one
        (at a generous estimate of the engine's bytes per entry) is whole.
        """
        held = sum(output.total for output in outputs.values()) + entries * LOG_ENTRY_OVERHEAD
        return held >= log_file_bytes()

    def stream_logs(self, execution_id, follow=False):
        try:
            stream = self.api.logs(
                execution_id, stdout=True, stderr=True, stream=True, follow=follow
            )
        except docker.errors.NotFound as error:
            raise ExecutorError(
                f"container {execution_id} no longer exists on host {self.host.name}"
            ) from error
        except ENGINE_ERRORS as error:
            raise self._error(
                error, f"reading the logs of container {execution_id[:12]}"
            ) from error
        try:
            yield from stream
        finally:
            stream.close()

    # -- ending -----------------------------------------------------------------------

    def stop(self, execution_id, grace_seconds):
        # The engine takes whole seconds: SIGTERM, then SIGKILL after the grace period.
        grace = max(0, math.ceil(grace_seconds))
        self._stopped.add(execution_id)
        try:
            self.api.stop(execution_id, timeout=grace)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as error:
            raise self._error(error, f"stopping container {execution_id[:12]}") from error

    def cleanup(self, execution_id):
        with self._state_lock:
            sampler = self._samplers.pop(execution_id, None)
            self._exit_codes.pop(execution_id, None)
            self._stopped.discard(execution_id)
        if sampler is not None:
            sampler.stop()
        try:
            self.api.remove_container(execution_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            if error.status_code == 409 and "in progress" in str(error.explanation):
                return  # auto_remove got there first
            raise self._error(error, f"removing container {execution_id[:12]}") from error
        except ENGINE_ERRORS as error:
            raise self._error(error, f"removing container {execution_id[:12]}") from error

    # -- health -----------------------------------------------------------------------

    def health_check(self):
        try:
            api = self.api
            api.ping()
            version = api.version()
            info = api.info()
        except ExecutorError as error:
            return Health(False, str(error))
        except ENGINE_ERRORS as error:
            return Health(False, str(self._error(error, "checking health")))
        running = info.get("ContainersRunning", 0)
        return Health(
            True,
            f"Docker {version.get('Version', '?')} on {self.connection}, "
            f"{running} container{'' if running == 1 else 's'} running",
        )
