"""A Fargate host's ``executor_config``, checked: every key named in the error it causes."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from ..base import OptionCheck, check_options, positive_seconds
from .definitions import MAX_STOP_TIMEOUT

REQUIRED = ("cluster", "subnets", "security_groups", "log_group", "execution_role_arn")
CAPACITY_PROVIDERS = ("FARGATE", "FARGATE_SPOT")
DEFAULT_POLL_INTERVAL = 2.0


def _text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _texts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_text(v) for v in value)


def _arn(value: Any) -> bool:
    return _text(value) and value.startswith("arn:")


def _stop_timeout(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 2 <= value <= MAX_STOP_TIMEOUT


def _credentials(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _text(k) and _arn(v) and ":secretsmanager:" in v for k, v in value.items()
    )


CONFIG_CHECKS: dict[str, OptionCheck] = {
    "cluster": (_text, "must be the cluster's name or ARN"),
    "subnets": (_texts, "must be a non-empty list of subnet ids"),
    "security_groups": (_texts, "must be a non-empty list of security group ids"),
    "assign_public_ip": (lambda v: isinstance(v, bool), "must be true or false"),
    "region": (_text, "must be an AWS region name, e.g. 'eu-west-1'"),
    "launch_type": (lambda v: v == "FARGATE", "must be 'FARGATE'"),
    "capacity_provider": (
        lambda v: v in CAPACITY_PROVIDERS,
        "must be 'FARGATE' or 'FARGATE_SPOT' (this executor runs tasks on Fargate)",
    ),
    "platform_version": (_text, "must be a Fargate platform version, e.g. 'LATEST' or '1.4.0'"),
    "log_group": (_text, "must be the name of an existing CloudWatch Logs group"),
    "log_stream_prefix": (
        lambda v: _text(v) and "/" not in v and ":" not in v,
        "must be a non-empty prefix without '/' or ':'",
    ),
    "execution_role_arn": (_arn, "must be an IAM role ARN (arn:aws:iam::...:role/...)"),
    "task_role_arn": (_arn, "must be an IAM role ARN (arn:aws:iam::...:role/...)"),
    "endpoint_url": (
        lambda v: _text(v) and v.startswith(("http://", "https://")),
        "must be an http:// or https:// URL",
    ),
    "stop_timeout": (
        _stop_timeout,
        f"must be a whole number of seconds from 2 to {MAX_STOP_TIMEOUT} (Fargate's range)",
    ),
    "repository_credentials": (
        _credentials,
        "must map each registry host to the ARN of its Secrets Manager secret "
        "(arn:aws:secretsmanager:...)",
    ),
    "poll_interval": (positive_seconds, "must be a number of seconds greater than 0"),
    "log_settle_seconds": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 300,
        "must be a number of seconds from 0 to 300",
    ),
}


def validate_config(config: Any) -> None:
    """Raise ValidationError naming the option when a host's executor_config is unusable."""
    if isinstance(config, dict) and "secrets_manager" in config:
        raise ValidationError(
            "fargate option 'secrets_manager' is not supported: a job's secret values are "
            "passed as environment variables in the task's overrides (see the README)"
        )
    check_options("fargate", config, CONFIG_CHECKS)
    if missing := [key for key in REQUIRED if key not in config]:
        raise ValidationError(
            "fargate executor_config needs " + ", ".join(repr(key) for key in missing)
        )
    if "launch_type" in config and "capacity_provider" in config:
        raise ValidationError(
            "fargate options 'launch_type' and 'capacity_provider' exclude each other: "
            "set one (ECS takes a launch type or a capacity provider strategy, not both)"
        )
