"""Reaching ECS and CloudWatch Logs: boto3 loaded only when needed, the clients, and what an
AWS error means for the app.

``boto3`` is an optional dependency (``pip install 'django-container-jobs[fargate]'``): it is
imported inside ``connect``, so this package imports without it and a host that needs it says
so (``ExecutorUnavailable``) instead of breaking the app at start-up.

Credentials come the standard boto3 way (environment, shared files, SSO, instance or task
role); the region from ``executor_config["region"]`` or else boto3's own lookup;
``endpoint_url`` points both clients elsewhere (a local stand-in in tests).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ...exceptions import ExecutorError, ExecutorUnavailable, HostRefused

INSTALL_HINT = "pip install 'django-container-jobs[fargate]'"
MISSING_BOTO3 = f"the Fargate executor needs boto3, which is not installed: {INSTALL_HINT}"

# Seconds to wait for AWS, and attempts per call (botocore's "standard" retry mode backs off
# on throttling and 5xx answers before giving up).
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
MAX_ATTEMPTS = 3

# Error codes that mean "these credentials may not do that" (or are not credentials at all).
DENIED_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
}
# Error codes that mean "AWS is busy or failing": try again later, maybe elsewhere.
BUSY_CODES = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ServerException",
    "InternalFailure",
    "InternalServerError",
}


def load(module: str) -> Any:
    """Import a module of boto3/botocore, or raise ExecutorUnavailable naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ExecutorUnavailable(MISSING_BOTO3) from error


@dataclass
class Clients:
    ecs: Any
    logs: Any
    region: str


def connect(host_name: str, config: dict[str, Any]) -> Clients:
    """boto3 clients for ECS and CloudWatch Logs in the host's region."""
    boto3 = load("boto3")
    botocore_config = load("botocore.config")
    exceptions = load("botocore.exceptions")
    try:
        session = boto3.session.Session(region_name=config.get("region") or None)
        region = session.region_name
        if not region:
            raise HostRefused(
                f"Fargate host '{host_name}' has no AWS region: set executor_config 'region' "
                "(or AWS_REGION / AWS_DEFAULT_REGION, or a region in ~/.aws/config)"
            )
        settings = botocore_config.Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            user_agent_extra="django-container-jobs",
        )
        endpoint = config.get("endpoint_url") or None
        ecs = session.client("ecs", region_name=region, endpoint_url=endpoint, config=settings)
        logs = session.client("logs", region_name=region, endpoint_url=endpoint, config=settings)
    except exceptions.BotoCoreError as error:
        raise ExecutorUnavailable(
            f"Fargate host '{host_name}': cannot set up the AWS clients: {error}"
        ) from error
    return Clients(ecs=ecs, logs=logs, region=region)


def aws_errors() -> tuple[type[BaseException], ...]:
    """What a boto3 call can raise besides our own errors."""
    exceptions = load("botocore.exceptions")
    return (exceptions.BotoCoreError, exceptions.ClientError)


def error_code(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def translate(
    error: BaseException,
    host_name: str,
    doing: str,
    service: str = "ecs",
    cls: type[ExecutorError] = ExecutorError,
    maybe_started: bool = False,
) -> ExecutorError:
    """The ExecutorError that says what an AWS error means, for reading alone.

    Refused credentials or permissions: ``HostRefused``, naming the IAM action. Throttling,
    AWS's own failures (5xx), and no answer at all: ``ExecutorUnavailable``. A request AWS
    found wrong (``ClientException``, ``InvalidParameterException``...): ``cls``.
    """
    exceptions = load("botocore.exceptions")
    where = f"Fargate host '{host_name}'"
    if isinstance(error, exceptions.ClientError):
        code = error_code(error)
        message = str((error.response.get("Error") or {}).get("Message") or error)
        status = (error.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        action = f"{service}:{error.operation_name}"
        if code in DENIED_CODES:
            return HostRefused(
                f"{doing} failed on {where}: AWS refused {action} ({code}): {message}; "
                f"the host's credentials need permission for {action}"
            )
        if code == "ClusterNotFoundException":
            return HostRefused(f"{doing} failed on {where}: the cluster does not exist ({message})")
        if code in BUSY_CODES or status >= 500:
            return ExecutorUnavailable(
                f"{doing} failed on {where}: AWS is busy or failing ({code or status}): {message}",
                maybe_started=maybe_started,
            )
        return cls(f"{doing} failed on {where}: {code}: {message}")
    if isinstance(error, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
        return HostRefused(
            f"{doing} failed on {where}: no usable AWS credentials ({error}); configure them "
            "the standard boto3 way (environment, ~/.aws, an instance or task role)"
        )
    # No answer: a connection refused or cut, a timeout. A request that was sent but whose
    # answer was lost may have been carried out.
    sent = isinstance(
        error,
        exceptions.ReadTimeoutError | exceptions.ConnectionClosedError,
    )
    return ExecutorUnavailable(
        f"{doing} failed on {where}: AWS did not answer: {error}",
        maybe_started=maybe_started and sent,
    )
