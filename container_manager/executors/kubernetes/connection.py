"""Reaching a Kubernetes API server: the client library (imported lazily), where the server
is, and what a failed call means.

The ``kubernetes`` package is an optional dependency: nothing here imports it at module level,
so the app imports without it; connecting without it raises ``ExecutorUnavailable`` saying how
to install it.

Where the API server is, in this order:

- ``api_url`` in ``executor_config`` (or else the host's ``connection_string``): that URL,
  with the host's ``tls_*`` fields for TLS (``tls_ca_cert`` checks the server, ``tls_client_cert``
  and ``tls_client_key`` authenticate us) and ``token_file`` (a file holding a bearer token);
- ``in_cluster: true``: the service account of the pod the worker runs in;
- otherwise a kubeconfig: ``kubeconfig`` (a path; default ``$KUBECONFIG`` or
  ``~/.kube/config``) and its ``context`` (default: the current one).
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...exceptions import ExecutorError, ExecutorUnavailable, HostRefused, LaunchError
from ...spec import HostSpec

INSTALL_HINT = "pip install 'django-container-jobs[kubernetes]'"


def kubernetes_client() -> Any:
    """The ``kubernetes.client`` module, or ExecutorUnavailable saying how to install it."""
    try:
        return importlib.import_module("kubernetes.client")
    except ImportError as error:
        raise ExecutorUnavailable(
            f"the Kubernetes executor needs the 'kubernetes' client library, which cannot be "
            f"imported ({error}); install it with: {INSTALL_HINT}"
        ) from None


def api_url(host: HostSpec, config: dict) -> str:
    return str(config.get("api_url") or host.connection_string or "")


def where(host: HostSpec, config: dict) -> str:
    """Where the API server is, as shown in messages."""
    if url := api_url(host, config):
        return url
    if config.get("in_cluster"):
        return "the in-cluster API server"
    context = config.get("context")
    return f"kubeconfig {config.get('kubeconfig') or '(default)'}" + (
        f", context '{context}'" if context else ""
    )


def insecure_url(url: str) -> str | None:
    """What is unsafe about ``url``: plain HTTP to an address that is not loopback."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return None
    hostname = (parts.hostname or "").rstrip(".").lower()
    if hostname in ("", "localhost"):
        return None
    try:
        if ipaddress.ip_address(hostname).is_loopback:
            return None
    except ValueError:
        pass
    return "plain HTTP, without TLS"


def host_problems(host: HostSpec, config: dict) -> dict[str, str]:
    errors = {}
    url = api_url(host, config)
    field = "executor_config" if config.get("api_url") else "connection_string"
    if url:
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            errors[field] = f"the API server URL {url!r} must start with https:// (or http://)"
        elif (problem := insecure_url(url)) and not host.allow_insecure:
            errors[field] = (
                f"the Kubernetes API at {url} is {problem}, to an address that is not loopback: "
                "use https://, or turn on allow_insecure only on a network you trust"
            )
    if bool(host.tls_client_cert) != bool(host.tls_client_key):
        missing = "tls_client_key" if host.tls_client_cert else "tls_client_cert"
        errors[missing] = "a client certificate needs both tls_client_cert and tls_client_key"
    return errors


def connect(host: HostSpec, config: dict, timeout: float) -> Any:
    """An ``ApiClient`` for the host's API server; ExecutorUnavailable when it cannot be made."""
    client = kubernetes_client()
    configuration = client.Configuration()
    url = api_url(host, config)
    try:
        if url:
            if (problems := host_problems(host, config)) and not host.allow_insecure:
                raise ExecutorUnavailable(
                    f"Kubernetes host '{host.name}': " + "; ".join(problems.values())
                )
            configuration.host = url.rstrip("/")
            configuration.verify_ssl = host.tls_verify
            if host.tls_ca_cert:
                configuration.ssl_ca_cert = host.tls_ca_cert
            if host.tls_client_cert:
                configuration.cert_file = host.tls_client_cert
                configuration.key_file = host.tls_client_key
            if token_file := config.get("token_file"):
                configuration.refresh_api_key_hook = TokenFile(token_file)
                configuration.refresh_api_key_hook(configuration)
        else:
            kube_config = importlib.import_module("kubernetes.config")
            if config.get("in_cluster"):
                kube_config.load_incluster_config(client_configuration=configuration)
            else:
                kube_config.load_kube_config(
                    config_file=config.get("kubeconfig"),
                    context=config.get("context"),
                    client_configuration=configuration,
                )
    except ExecutorUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - ConfigException, a missing file, bad YAML
        raise ExecutorUnavailable(
            f"Kubernetes host '{host.name}' cannot be configured from {where(host, config)}: "
            f"{error}"
        ) from None
    # A call that fails is reported at once (the worker retries), not retried here for minutes.
    configuration.retries = 0
    return client.ApiClient(configuration)


class TokenFile:
    """Sets the bearer token from a file, read again every minute: service account tokens
    (``kubectl create token``, projected volumes) expire and are replaced in place."""

    REREAD_SECONDS = 60.0

    def __init__(self, path: str):
        self.path = path
        self.read_at: float | None = None

    def __call__(self, configuration: Any) -> None:
        now = time.monotonic()
        if self.read_at is not None and now - self.read_at < self.REREAD_SECONDS:
            return
        token = Path(self.path).read_text().strip()
        configuration.api_key = {"BearerToken": f"Bearer {token}"}
        self.read_at = now


# -- what a failed call means ----------------------------------------------------------------


def status_of(error: Exception) -> int | None:
    """The HTTP status of an API error, None for a transport error."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) and status > 0 else None


def api_message(error: Exception) -> str:
    """The server's own message (a ``Status`` object's ``message``), else the HTTP reason."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return body[:500]
        if isinstance(parsed, dict) and parsed.get("message"):
            return str(parsed["message"])
    return str(getattr(error, "reason", "") or error)


def invalid_fields(error: Exception) -> list[str]:
    """The fields a 422 Invalid answer names (``details.causes[].field``)."""
    try:
        body = json.loads(getattr(error, "body", "") or "")
        causes = body["details"]["causes"]
        return [str(cause["field"]) for cause in causes if cause.get("field")]
    except (ValueError, KeyError, TypeError):
        return []


def translate(
    error: Exception,
    host: HostSpec,
    config: dict,
    doing: str,
    cls: type[ExecutorError] = ExecutorError,
    secrets: list[str] | tuple[str, ...] = (),
) -> ExecutorError:
    """An ExecutorError worth reading alone, for an API or transport error while ``doing``.

    401/403: HostRefused (credentials or RBAC); 5xx and transport errors: ExecutorUnavailable;
    422: ``cls`` naming the invalid fields; anything else: ``cls``. No secret value is quoted.
    """
    at = f"Kubernetes host '{host.name}'"
    status = status_of(error)
    if status is None:
        reason = _transport_reason(error)
        translated: ExecutorError = ExecutorUnavailable(
            f"{doing} failed: the Kubernetes API of {at} ({where(host, config)}) cannot be "
            f"reached: {reason}"
        )
    else:
        message = api_message(error)
        if status == 401:
            translated = HostRefused(
                f"{doing} failed: {at} refused our credentials (401 Unauthorized): {message}"
            )
        elif status == 403:
            translated = HostRefused(
                f"{doing} failed: {at} forbids it (403 Forbidden; check the RBAC Role bound to "
                f"the service account, see the README): {message}"
            )
        elif status >= 500:
            translated = ExecutorUnavailable(
                f"{doing} failed: the Kubernetes API of {at} answered {status}: {message}"
            )
        elif status == 422:
            fields = ", ".join(invalid_fields(error)) or "unknown field"
            translated = (cls if cls is not ExecutorError else LaunchError)(
                f"{doing} failed: {at} refused it as invalid ({fields}): {message}"
            )
        else:
            translated = cls(f"{doing} failed on {at} ({status}): {message}")
    return scrubbed(translated, secrets)


def scrubbed(error: ExecutorError, secrets: list[str] | tuple[str, ...]) -> ExecutorError:
    text = str(error)
    if not any(secret and secret in text for secret in secrets):
        return error
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    new = type(error)(text)
    if isinstance(error, ExecutorUnavailable | HostRefused):
        new.maybe_started = error.maybe_started  # type: ignore[attr-defined]
    return new


def _transport_reason(error: Exception) -> str:
    seen = set()
    current: BaseException | None = error
    reasons = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reasons.append(current)
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__
        if not isinstance(current, BaseException):
            current = None
    for candidate in reversed(reasons):
        if isinstance(candidate, TimeoutError) or "timed out" in str(candidate).lower():
            return "no answer in time"
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror
    return str(reasons[-1]) if reasons else str(error)
