"""Reaching Cloud Run and Cloud Logging: the official clients, their credentials, and what
their errors mean here.

The Google libraries are imported when a client is first needed, never at module import, so
this package (and the app) imports without them. Credentials are Application Default
Credentials (a service account key in ``GOOGLE_APPLICATION_CREDENTIALS``, the metadata server,
``gcloud auth application-default login``), except against a local stand-in
(``api_endpoint`` / ``logging_endpoint`` at ``http://`` on a loopback address), which gets
anonymous credentials. Calls are made over REST, without the libraries' automatic retries:
the queue retries, on another host if need be.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from ...exceptions import ExecutorError, ExecutorUnavailable, HostRefused, LaunchError
from ...spec import HostSpec
from .config import uses_standin

INSTALL_HINT = "pip install 'django-container-jobs[cloudrun]'"
LOGGING_HINT = "pip install google-cloud-logging"

# What each IAM permission is needed for, named in a 403's message.
PERMISSIONS = {
    "create": "run.jobs.create",
    "get": "run.jobs.get",
    "update": "run.jobs.update",
    "run": "run.jobs.runWithOverrides",
    "list jobs": "run.jobs.list",
    "get execution": "run.executions.get",
    "list executions": "run.executions.list",
    "cancel": "run.executions.cancel",
    "delete": "run.executions.delete",
    "list tasks": "run.tasks.list",
    "logs": "logging.logEntries.list",
}


def run_v2() -> Any:
    """``google.cloud.run_v2``, or ExecutorUnavailable saying how to install it."""
    try:
        return importlib.import_module("google.cloud.run_v2")
    except ImportError as error:
        raise ExecutorUnavailable(
            f"the Cloud Run executor needs the Google Cloud Run client ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from None


def api_exceptions() -> Any:
    return importlib.import_module("google.api_core.exceptions")


@dataclass
class Clients:
    jobs: Any
    executions: Any
    tasks: Any
    run_v2: Any


def connect(host: HostSpec, config: dict[str, Any]) -> Clients:
    """Cloud Run clients for the host's project and region (no request is made yet)."""
    run = run_v2()
    endpoint = config.get("api_endpoint")
    kwargs: dict[str, Any] = {"transport": "rest"}
    if endpoint:
        kwargs["client_options"] = {"api_endpoint": endpoint}
    if uses_standin(endpoint):
        kwargs["credentials"] = _anonymous()
    try:
        return Clients(
            jobs=run.JobsClient(**kwargs),
            executions=run.ExecutionsClient(**kwargs),
            tasks=run.TasksClient(**kwargs),
            run_v2=run,
        )
    except Exception as error:  # noqa: BLE001 - google.auth's DefaultCredentialsError and kin
        raise ExecutorUnavailable(
            f"Cloud Run host '{host.name}': no usable Google credentials ({error}); set up "
            "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata "
            "server, or gcloud auth application-default login)"
        ) from None


def logging_client(host: HostSpec, config: dict[str, Any]) -> Any:
    """A Cloud Logging client (HTTP/JSON) for the host's project; ExecutorError when the
    library is missing or credentials are unusable."""
    try:
        cloud_logging = importlib.import_module("google.cloud.logging")
    except ImportError as error:
        raise ExecutorError(
            f"reading a Cloud Run job's output needs the Cloud Logging client ({error}); "
            f"install it with: {LOGGING_HINT}"
        ) from None
    endpoint = config.get("logging_endpoint")
    kwargs: dict[str, Any] = {"project": config["project"], "_use_grpc": False}
    if endpoint:
        kwargs["client_options"] = {"api_endpoint": endpoint}
    if uses_standin(endpoint):
        kwargs["credentials"] = _anonymous()
    try:
        return cloud_logging.Client(**kwargs)
    except Exception as error:  # noqa: BLE001 - credentials
        raise ExecutorError(
            f"Cloud Run host '{host.name}': no usable credentials for Cloud Logging ({error})"
        ) from None


def _anonymous() -> Any:
    return importlib.import_module("google.auth.credentials").AnonymousCredentials()


def transport_errors() -> tuple[type[BaseException], ...]:
    """What a call can raise besides an API error: the HTTP transport's failures."""
    errors: list[type[BaseException]] = [OSError]
    try:
        errors.append(importlib.import_module("requests").RequestException)
        errors.append(importlib.import_module("google.auth.exceptions").GoogleAuthError)
    except ImportError:
        pass
    return tuple(errors)


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, api_exceptions().NotFound)


def translate(
    host: HostSpec,
    error: BaseException,
    doing: str,
    permission: str = "",
    launching: bool = False,
    maybe_started: bool = False,
) -> ExecutorError:
    """The app's error for a failed call: the host's trouble (HostError) or the job's
    (LaunchError while ``launching``, else ExecutorError). ``maybe_started``: the call may
    have started an execution even though its answer was lost."""
    exceptions = api_exceptions()
    where = f"Cloud Run host '{host.name}'"
    if isinstance(error, exceptions.GoogleAPICallError):
        message = _message(error)
        # Over REST the client raises the HTTP classes (Forbidden, TooManyRequests); over gRPC
        # their subclasses (PermissionDenied, ResourceExhausted): the bases catch both.
        if isinstance(error, exceptions.Forbidden | exceptions.Unauthorized):
            need = f" (it needs the IAM permission {permission})" if permission else ""
            return HostRefused(
                f"{doing} was refused on {where}: {message}; grant the identity this host "
                f"runs as the permission to do it{need}"
            )
        if isinstance(error, exceptions.TooManyRequests):
            return HostRefused(f"{doing} on {where} hit a quota or rate limit: {message}")
        if isinstance(error, exceptions.ServerError):
            maybe = maybe_started and not isinstance(error, exceptions.ServiceUnavailable)
            return ExecutorUnavailable(
                f"{doing} failed on {where}: the API answered {error.code}: {message}",
                maybe_started=maybe,
            )
        cls = LaunchError if launching else ExecutorError
        return cls(f"{doing} failed on {where}: {message}")
    return ExecutorUnavailable(
        f"{where} could not be reached while {doing}: {_reason(error)}",
        maybe_started=maybe_started,
    )


def _message(error: Any) -> str:
    # REST errors start with the request ("POST https://...: "): the API's words are enough.
    text = str(getattr(error, "message", "") or error)
    return re.sub(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ", "", text)


def _reason(error: BaseException) -> str:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        current = current.__cause__ or current.__context__
    return f"{type(error).__name__}: {error}"
