"""Executor registry: executor types are names mapped to classes, not database choices.

Third-party executors are added with ``CONTAINER_MANAGER["EXECUTORS"] = {"name": "path.Class"}``;
no model change or migration is needed.
"""

from functools import cache

from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from ..conf import setting
from ..exceptions import ExecutorError, ExecutorUnavailable, HostError, HostRefused, LaunchError
from .base import BaseExecutor, Health, Outcome

BUILTIN_EXECUTORS = {
    "cloudrun": "container_manager.executors.cloudrun.CloudRunExecutor",
    "docker": "container_manager.executors.docker.DockerExecutor",
    "fallback": "container_manager.executors.fallback.FallbackChain",
    "fargate": "container_manager.executors.fargate.FargateExecutor",
    "kubernetes": "container_manager.executors.kubernetes.KubernetesExecutor",
    "mock": "container_manager.executors.mock.MockExecutor",
}

__all__ = [
    "BaseExecutor",
    "ExecutorError",
    "ExecutorUnavailable",
    "Health",
    "HostError",
    "HostRefused",
    "LaunchError",
    "Outcome",
    "executor_types",
    "get_executor_class",
    "validate_executor_type",
]


def executor_types() -> dict[str, str]:
    return {**BUILTIN_EXECUTORS, **setting("EXECUTORS")}


@cache
def _load(path: str) -> type[BaseExecutor]:
    cls = import_string(path)
    if not (isinstance(cls, type) and issubclass(cls, BaseExecutor)):
        raise TypeError(f"{path} is not a BaseExecutor subclass")
    return cls


def get_executor_class(type_name: str) -> type[BaseExecutor]:
    types = executor_types()
    if type_name not in types:
        raise KeyError(type_name)
    return _load(types[type_name])


def validate_executor_type(value: str) -> None:
    if value not in executor_types():
        known = ", ".join(sorted(executor_types()))
        raise ValidationError(f"unknown executor type {value!r}; registered types: {known}")
