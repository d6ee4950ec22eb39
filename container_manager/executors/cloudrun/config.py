"""The host's ``executor_config`` for Cloud Run Jobs, checked, and what it means.

Keys: ``project`` and ``region`` (required); ``service_account`` (the identity jobs run as and
pull images with); ``vpc_connector``, or ``vpc_network`` with ``vpc_subnet`` (Direct VPC
egress), and ``vpc_egress``; ``gpu_type`` (the accelerator for jobs that ask for GPUs, e.g.
``nvidia-l4``); ``max_retries`` (only 0: the queue retries, not Cloud Run); ``timeout``
(seconds to wait for an API answer); ``poll_seconds`` (between status checks while
waiting); ``log_settle_seconds`` (how long after an execution ends its output may still be
arriving in Cloud Logging); ``api_endpoint`` and ``logging_endpoint`` (a stand-in's address,
for tests: plain ``http://`` only to a loopback address, with anonymous credentials).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from ..base import OptionCheck, check_options, positive_seconds

DEFAULT_TIMEOUT = 60.0
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_LOG_SETTLE_SECONDS = 5.0
VPC_EGRESS = ("all-traffic", "private-ranges-only")

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.:-]+$")
_REGION = re.compile(r"^[a-z]+(-[a-z]+)*[0-9]+$")
_SERVICE_ACCOUNT = re.compile(r"^[^@\s]+@[^@\s]+$")


def _text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != "" and value == value.strip()


def _endpoint_problem(value: Any) -> str | None:
    if not _text(value):
        return "must be a non-empty URL"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s)://host[:port] URL"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return (
            "may use plain http:// only to a loopback address (a local stand-in); "
            "anything else must be https://"
        )
    return None


CHECKS: dict[str, OptionCheck] = {
    "project": (lambda v: _text(v) and bool(_PROJECT.match(v)), "must be a project id"),
    "region": (
        lambda v: _text(v) and bool(_REGION.match(v)),
        "must be a region, e.g. 'europe-west1'",
    ),
    "service_account": (
        lambda v: _text(v) and bool(_SERVICE_ACCOUNT.match(v)),
        "must be a service account's e-mail address",
    ),
    "vpc_connector": (_text, "must be a non-empty string"),
    "vpc_network": (_text, "must be a non-empty string"),
    "vpc_subnet": (_text, "must be a non-empty string"),
    "vpc_egress": (lambda v: v in VPC_EGRESS, f"must be one of {', '.join(VPC_EGRESS)}"),
    "gpu_type": (_text, "must be an accelerator name, e.g. 'nvidia-l4'"),
    "max_retries": (
        lambda v: v == 0 and not isinstance(v, bool),
        "can only be 0: a failed attempt is retried by the queue (on any host), never by "
        "Cloud Run behind its back",
    ),
    "timeout": (positive_seconds, "must be a number of seconds greater than 0"),
    "poll_seconds": (positive_seconds, "must be a number of seconds greater than 0"),
    "log_settle_seconds": (
        lambda v: positive_seconds(v) or (v == 0 and not isinstance(v, bool)),
        "must be a number of seconds, 0 or more",
    ),
    "api_endpoint": (lambda v: _endpoint_problem(v) is None, lambda v: _endpoint_problem(v) or ""),
    "logging_endpoint": (
        lambda v: _endpoint_problem(v) is None,
        lambda v: _endpoint_problem(v) or "",
    ),
}


def validate_config(config: Any) -> None:
    """Raise ValidationError naming the key when a host's executor_config is unusable."""
    check_options("cloudrun", config, CHECKS)
    for key in ("project", "region"):
        if key not in config:
            raise ValidationError(f"cloudrun option {key!r} is required")
    if "vpc_connector" in config and ("vpc_network" in config or "vpc_subnet" in config):
        raise ValidationError(
            "cloudrun options: use either 'vpc_connector' or 'vpc_network' with 'vpc_subnet' "
            "(Direct VPC egress), not both"
        )
    if ("vpc_network" in config) != ("vpc_subnet" in config):
        raise ValidationError("cloudrun options 'vpc_network' and 'vpc_subnet' go together")
    if "vpc_egress" in config and not ("vpc_connector" in config or "vpc_network" in config):
        raise ValidationError("cloudrun option 'vpc_egress' needs a VPC connector or network")


def is_loopback(hostname: str | None) -> bool:
    if not hostname:
        return False
    if hostname.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def uses_standin(endpoint: str | None) -> bool:
    """A plain-HTTP loopback endpoint: a local stand-in, spoken to with anonymous
    credentials (real credentials are never sent over plain HTTP)."""
    if not endpoint:
        return False
    parts = urlsplit(endpoint)
    return parts.scheme == "http" and is_loopback(parts.hostname)
