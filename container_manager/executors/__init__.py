"""Executor registry: executor types are names mapped to classes, not database choices.

Third-party executors are added with ``CONTAINER_MANAGER["EXECUTORS"] = {"name": "path.Class"}``;
no model change or migration is needed.
"""

import json
import threading
from collections import OrderedDict
from dataclasses import fields
from functools import cache

from django.core.exceptions import ValidationError
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from ..conf import setting
from ..exceptions import ExecutorError, ExecutorUnavailable, HostError, HostRefused, LaunchError
from ..spec import HostSpec
from .base import BaseExecutor, Health, Outcome

# Executors kept for reuse (see executor_for); more hosts than this in one process is rare.
KEPT_EXECUTORS = 64

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
    "executor_for",
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


_kept: OrderedDict[tuple[type[BaseExecutor], str], BaseExecutor] = OrderedDict()
_kept_lock = threading.Lock()


def executor_for(host: HostSpec) -> BaseExecutor:
    """The executor for ``host``, one per host and settings in this process.

    Executors are thread-safe and keep their backend's client (a Docker client, an API
    session), so the jobs of a host share one instead of connecting anew each (for Docker,
    a new client asks the engine for its API version first). Changed settings make a new one.
    """
    cls = get_executor_class(host.executor_type)
    key = (cls, _fingerprint(host))
    with _kept_lock:
        executor = _kept.get(key)
        if executor is None:
            executor = _kept[key] = cls(host)  # cheap: executors connect on first use
            if len(_kept) > KEPT_EXECUTORS:
                _kept.popitem(last=False)
        else:
            _kept.move_to_end(key)
        return executor


def forget_executors(**_kwargs) -> None:
    """Drop the kept executors: the next call makes new ones (settings changed, tests)."""
    with _kept_lock:
        _kept.clear()


def _fingerprint(host: HostSpec) -> str:
    values = {f.name: getattr(host, f.name) for f in fields(host)}
    return json.dumps(values, sort_keys=True, default=dict)


setting_changed.connect(forget_executors)
