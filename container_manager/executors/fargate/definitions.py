"""Task definitions: what a Fargate task is registered with, and reusing them.

A task definition fixes the image, the size (CPU and memory), the container's confinement,
its log configuration, roles and registry credentials. Jobs that agree on all of that share
one: its family is ``cm-`` and a hash of those fields, so it is found again (with
``describe_task_definition``) instead of registered per job, and never needs deregistering.
What varies per job, the command and environment, goes in ``run_task``'s overrides.

Sizes: Fargate accepts only some CPU/memory pairs. A job's ``cpus`` and ``memory_mb`` are
mapped to the smallest valid pair that covers both (the fewest vCPUs, then the least memory);
a job that asks for neither gets the smallest size (0.25 vCPU, 512 MiB). The container's hard
memory limit is the task's memory, so a job over it is killed (``OutOfMemoryError``).

Confinement (see the README's table): a read-only root (``readonlyRootFilesystem``), the user
(``user``) and capabilities (``linuxParameters.capabilities``: any of Fargate's defaults can
be dropped; of the others, only ``SYS_PTRACE`` can be added) are expressed; a privileged
container, the host's network or PID namespace, bind mounts and any other added capability
cannot be, and such a job is refused. No-new-privileges and the process limit have no setting
on Fargate: every task runs in a micro-VM of its own, and these two are not applied.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ...exceptions import LaunchError
from ...spec import Confinement, LaunchSpec

CONTAINER_NAME = "job"
DEFAULT_STOP_TIMEOUT = 30
MAX_STOP_TIMEOUT = 120  # Fargate's largest stopTimeout
DEFAULT_STREAM_PREFIX = "cm"

# Valid Fargate task sizes: CPU units (1024 = 1 vCPU) and the memory (MiB) each allows.
GIB = 1024
FARGATE_SIZES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (256, (512, 1 * GIB, 2 * GIB)),
    (512, tuple(range(1 * GIB, 4 * GIB + 1, GIB))),
    (1024, tuple(range(2 * GIB, 8 * GIB + 1, GIB))),
    (2048, tuple(range(4 * GIB, 16 * GIB + 1, GIB))),
    (4096, tuple(range(8 * GIB, 30 * GIB + 1, GIB))),
    (8192, tuple(range(16 * GIB, 60 * GIB + 1, 4 * GIB))),
    (16384, tuple(range(32 * GIB, 120 * GIB + 1, 8 * GIB))),
)

# The capabilities a Fargate container has unless some are dropped (Docker's default set);
# of the rest, only SYS_PTRACE can be added.
FARGATE_DEFAULT_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
ADDABLE_CAPABILITIES = frozenset({"SYS_PTRACE"})


def fargate_size(cpus: float | None, memory_mb: int | None) -> tuple[int, int]:
    """The smallest valid Fargate (CPU units, memory MiB) that gives at least ``cpus`` vCPUs
    and ``memory_mb`` MiB; LaunchError when no Fargate size is that large."""
    cpu_units = math.ceil((cpus or 0) * 1024 - 1e-9)
    memory = memory_mb or 0
    for size_cpu, memories in FARGATE_SIZES:
        if size_cpu < cpu_units:
            continue
        for size_memory in memories:
            if size_memory >= memory:
                return size_cpu, size_memory
    largest_cpu, largest_memories = FARGATE_SIZES[-1]
    raise LaunchError(
        f"no Fargate task size gives {cpus or 0:g} vCPU and {memory} MiB: the largest is "
        f"{largest_cpu // 1024} vCPU and {largest_memories[-1] // GIB} GiB"
    )


def _capability(name: str) -> str:
    name = name.strip().upper()
    return name[4:] if name.startswith("CAP_") else name


def capabilities(confined: Confinement) -> dict[str, list[str]]:
    """``linuxParameters.capabilities`` giving the container exactly the capabilities the
    confinement keeps; LaunchError naming those Fargate cannot add."""
    drop = {_capability(c) for c in confined.drop_capabilities}
    add = {_capability(c) for c in confined.add_capabilities}
    keep = set(add) if "ALL" in drop else (set(FARGATE_DEFAULT_CAPABILITIES) - drop) | add
    extra = keep - FARGATE_DEFAULT_CAPABILITIES
    if refused := sorted(extra - ADDABLE_CAPABILITIES):
        raise LaunchError(
            "Fargate cannot add the capabilit"
            + ("y " if len(refused) == 1 else "ies ")
            + ", ".join(refused)
            + " (only SYS_PTRACE can be added to a Fargate container)"
        )
    return {
        "add": sorted(extra),
        "drop": sorted(FARGATE_DEFAULT_CAPABILITIES - keep),
    }


def refusals(spec: LaunchSpec) -> list[str]:
    """What the job asks for that Fargate cannot give it (empty if nothing)."""
    confined = spec.confinement
    problems = []
    if spec.gpus > 0:
        problems.append(
            f"the job asks for {spec.gpus} GPU{'s' if spec.gpus != 1 else ''}, and Fargate has "
            "no GPUs; run it on a host with GPUs (an ECS EC2 capacity provider, Kubernetes...)"
        )
    if confined.privileged:
        problems.append("Fargate cannot run a privileged container")
    if confined.host_network:
        problems.append(
            "Fargate cannot give a container the host's network (tasks use awsvpc networking)"
        )
    if confined.host_pid:
        problems.append("Fargate cannot give a container the host's PID namespace")
    if confined.mounts:
        targets = ", ".join(mount.target for mount in confined.mounts)
        problems.append(
            f"Fargate cannot bind-mount host directories (asked for: {targets}); use EFS or "
            "task storage"
        )
    return problems


def container_definition(
    spec: LaunchSpec, config: dict[str, Any], memory: int, region: str
) -> dict[str, Any]:
    confined = spec.confinement
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "essential": True,
        # The hard limit: a container over it is killed (OutOfMemoryError).
        "memory": memory,
        "stopTimeout": config.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
        "readonlyRootFilesystem": confined.read_only_root,
        "linuxParameters": {"capabilities": capabilities(confined)},
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": config["log_group"],
                "awslogs-region": region,
                "awslogs-stream-prefix": config.get("log_stream_prefix", DEFAULT_STREAM_PREFIX),
            },
        },
    }
    if confined.user:
        container["user"] = confined.user
    if spec.working_dir:
        container["workingDirectory"] = spec.working_dir
    if spec.registry_auth is not None:
        registry = spec.registry_auth.registry
        secrets = config.get("repository_credentials") or {}
        if registry not in secrets:
            raise LaunchError(
                f"the image's registry '{registry}' needs credentials, and Fargate takes them "
                "only from AWS Secrets Manager: add the registry with its secret's ARN to the "
                "host's executor_config 'repository_credentials'"
            )
        container["repositoryCredentials"] = {"credentialsParameter": secrets[registry]}
    return container


def task_definition(spec: LaunchSpec, config: dict[str, Any], region: str) -> dict[str, Any]:
    """Keyword arguments for ``register_task_definition`` (``family`` included) that run
    ``spec``'s image at its size, confined as it says; LaunchError if Fargate cannot."""
    if problems := refusals(spec):
        raise LaunchError("; ".join(problems))
    cpu, memory = fargate_size(spec.cpus, spec.memory_mb)
    definition: dict[str, Any] = {
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": str(cpu),
        "memory": str(memory),
        "executionRoleArn": config["execution_role_arn"],
        "containerDefinitions": [container_definition(spec, config, memory, region)],
    }
    if config.get("task_role_arn"):
        definition["taskRoleArn"] = config["task_role_arn"]
    return {"family": family(definition), **definition}


def family(definition: dict[str, Any]) -> str:
    """``cm-`` and a hash of everything that defines the task definition."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return "cm-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]
