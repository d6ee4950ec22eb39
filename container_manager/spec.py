"""What an executor is given: plain, frozen descriptions of a host and of one launch.

Executors know nothing of models, the container policy or secrets at rest. Everything they
need is decided before they are called (``launching.launch_spec``): the policy is checked,
secrets are unsealed, confinement is computed, labels are set. This module imports nothing
from the app, so backends can be written and tested against it alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

LABEL_PREFIX = "container_manager."
JOB_ID_LABEL = f"{LABEL_PREFIX}job_id"
ATTEMPT_LABEL = f"{LABEL_PREFIX}attempt"
HOST_LABEL = f"{LABEL_PREFIX}host"
MANAGED_LABEL = f"{LABEL_PREFIX}managed"


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class Confinement:
    """How one job's container is confined, whatever runs it.

    Always: every capability dropped but ``add_capabilities``, no privilege gained through
    setuid binaries or file capabilities (no-new-privileges), at most ``pids_limit``
    processes. The rest is what the job asked for and the policy allowed.
    """

    user: str | None
    read_only_root: bool
    privileged: bool
    host_network: bool
    host_pid: bool
    add_capabilities: tuple[str, ...]
    pids_limit: int
    mounts: tuple[Mount, ...]
    drop_capabilities: tuple[str, ...] = ("ALL",)
    no_new_privileges: bool = True


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for the private registry an image is pulled from (the password in clear:
    never in ``repr``, never in a message)."""

    registry: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class HostSpec:
    """Where an executor runs jobs: one ExecutorHost's settings, as plain values."""

    name: str
    executor_type: str
    connection_string: str = ""
    tls_verify: bool = True
    tls_ca_cert: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    allow_insecure: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _frozen(self.config))
        object.__setattr__(self, "labels", _frozen(self.labels))


@dataclass(frozen=True)
class LaunchSpec:
    """One attempt of one job, ready to start: built once per attempt, never changed.

    ``env`` holds clear values (secrets unsealed), so it is left out of ``repr``;
    ``secret_names`` says which of them must never appear in a message.
    """

    job_id: str
    attempt: int
    host: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    confinement: Confinement
    timeout_seconds: int
    working_dir: str | None = None
    memory_mb: int | None = None
    cpus: float | None = None
    secret_names: frozenset[str] = frozenset()
    name: str = ""
    # Accelerators (GPUs) the job asks for; a backend that cannot provide them refuses it.
    gpus: int = 0
    registry_auth: RegistryAuth | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", _frozen(self.env))

    @property
    def labels(self) -> dict[str, str]:
        """What links an execution to its job, on every backend that can label things."""
        return {
            JOB_ID_LABEL: self.job_id,
            ATTEMPT_LABEL: str(self.attempt),
            HOST_LABEL: self.host,
            MANAGED_LABEL: "true",
        }

    @property
    def secret_values(self) -> list[str]:
        """The clear values of the secrets, longest first (for scrubbing messages)."""
        values = {self.env[name] for name in self.secret_names if self.env.get(name)}
        if self.registry_auth is not None and self.registry_auth.password:
            values.add(self.registry_auth.password)
        return sorted(values, key=len, reverse=True)
