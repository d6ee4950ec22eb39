"""Reaching a Docker engine: where it is, whether talking to it is safe, the client, and what
a failure to reach it means.

A ``tcp://`` engine at an address that is not loopback (127.0.0.0/8, ::1, localhost) is only
used with TLS that checks the engine's certificate, unless the host has ``allow_insecure``:
``host_problems`` says so when the host is validated, and ``connect`` refuses it whatever saved
the host (a blank connection string taken from ``DOCKER_HOST`` included). The CA configured on
the host is the one used: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` and proxy variables in the
environment are ignored for engine connections.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.tls
import requests
import urllib3.exceptions

from ...exceptions import ExecutorUnavailable
from ...spec import HostSpec

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# What a call to the engine can raise besides our own errors.
ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)


def where(host: HostSpec) -> str:
    """Where the engine is, as shown in messages."""
    return host.connection_string or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def host_problems(host: HostSpec) -> dict[str, str]:
    """What is wrong with a Docker host's connection settings, by field; empty if nothing."""
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
    return errors


# Connections to the engine kept for reuse by one host's executor. Each running job may hold
# two at once (waiting, and its usage stream); beyond the pool, connections are opened for
# one request and thrown away.
POOLED_CONNECTIONS = 64


def connect(host: HostSpec, timeout: float) -> docker.DockerClient:
    """A client for the host's engine; ExecutorUnavailable when it cannot or must not be used."""
    tls_files = (host.tls_ca_cert, host.tls_client_cert, host.tls_client_key)
    try:
        if not host.connection_string and not any(tls_files):
            kwargs = docker.utils.kwargs_from_env()
        else:
            kwargs = {"base_url": host.connection_string or None}
            if kwargs["base_url"] is None:
                kwargs["base_url"] = docker.utils.kwargs_from_env().get("base_url")
            if any(tls_files):
                kwargs["tls"] = tls_config(host)
        tls = kwargs.get("tls")
        problem = insecure_connection(
            kwargs.get("base_url"), bool(tls), getattr(tls, "verify", True)
        )
        if problem and not host.allow_insecure:
            raise ExecutorUnavailable(insecure_message(host, kwargs["base_url"], problem))
        return _Client(timeout=timeout, max_pool_size=POOLED_CONNECTIONS, **kwargs)
    except docker.errors.TLSParameterError as error:
        raise ExecutorUnavailable(
            f"Docker host '{host.name}' has unusable TLS settings: {error}"
        ) from error
    except ENGINE_ERRORS as error:
        raise unavailable(host, error, "connecting", timeout) from error


def tls_config(host: HostSpec) -> docker.tls.TLSConfig:
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


def unavailable(host: HostSpec, error: Exception, doing: str, timeout: float):
    """The ExecutorUnavailable that says why the engine could not be reached while ``doing``."""
    at = f"Docker engine '{host.name}' at {where(host)}"
    if _is_timeout(error):
        return ExecutorUnavailable(f"{at} did not answer within {timeout:g} s while {doing}")
    return ExecutorUnavailable(f"{at} is unreachable: {_reason(error)}")


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
