"""What a Docker container is created with: the host's executor_config, checked; the
confinement, limits, labels and log bounds of one launch (a ``LaunchSpec``)."""

from __future__ import annotations

from typing import Any

import docker.types
from django.core.exceptions import ValidationError

from ...conf import setting
from ...spec import Confinement, LaunchSpec
from ..base import OptionCheck, check_options, positive_seconds

PULL_POLICIES = ("never", "if-missing", "always")
DEFAULT_PULL_POLICY = "if-missing"
DEFAULT_TIMEOUT = 60
MIB = 1024 * 1024
# Log files the engine keeps per container (see log_config).
LOG_FILES = 2


CONFIG_CHECKS: dict[str, OptionCheck] = {
    "pull_policy": (
        lambda v: v in PULL_POLICIES,
        f"must be one of {', '.join(repr(p) for p in PULL_POLICIES)}",
    ),
    "auto_remove": (lambda v: isinstance(v, bool), "must be true or false"),
    "network": (lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty string"),
    "timeout": (positive_seconds, "must be a number of seconds greater than 0"),
}


def validate_config(config: Any) -> None:
    """Raise ValidationError naming the option when a host's executor_config is unusable."""
    check_options("docker", config, CONFIG_CHECKS)
    network = config.get("network", "")
    if network == "host" or network.startswith("container:"):
        # Sharing another network namespace is the host_network loosening by another
        # name: the policy decides, per job, through the job's host_network switch.
        raise ValidationError(
            f"docker option 'network' cannot be {network!r}: a job asks for the host's "
            "network with host_network, which the container policy must allow"
        )


def container_options(spec: LaunchSpec, config: dict) -> dict:
    """Keyword arguments for ``containers.create`` that run ``spec`` as the host configures."""
    options = {
        "command": list(spec.command) or None,
        "environment": dict(spec.env),
        "working_dir": spec.working_dir,
        "labels": spec.labels,
        # One name per attempt: the engine refuses a second container of the same attempt,
        # which makes a launch tried again after a lost answer idempotent.
        "name": container_name(spec.job_id, spec.attempt),
        "auto_remove": config.get("auto_remove", False),
        "log_config": log_config(),
    }
    if spec.memory_mb:
        # Swap limit equal to the memory limit: over the limit means killed, not swapped.
        options["mem_limit"] = options["memswap_limit"] = spec.memory_mb * MIB
    if spec.cpus:
        options["nano_cpus"] = int(round(spec.cpus * 1e9))
    if spec.gpus:
        # The engine's GPU device requests (the NVIDIA container toolkit provides them).
        options["device_requests"] = [
            docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])
        ]
    options.update(confinement_options(spec.confinement, config.get("network")))
    return options


def container_name(job_id: str, attempt: int) -> str:
    return f"cm-{job_id}-{attempt}"


def log_config() -> docker.types.LogConfig:
    """An engine-side bound on a container's log, so a chatty job cannot fill the engine's disk.

    The engine's ``local`` driver (raw bytes, a few dozen bytes of framing per line, unlike
    json-file's escaping) keeps at most two files of four times ``MAX_OUTPUT_BYTES``: room for
    what is kept of both streams, and a bound on what harvesting reads. Beyond that the engine
    drops the oldest output, and the harvested output says it may have.
    """
    return docker.types.LogConfig(
        type="local",
        config={
            "max-size": str(log_file_bytes()),
            "max-file": str(LOG_FILES),
            "compress": "false",
        },
    )


def log_file_bytes() -> int:
    return max(4 * setting("MAX_OUTPUT_BYTES"), MIB)


def confinement_options(confined: Confinement, network: str | None = None) -> dict:
    """The container-creation options that confine a job (see ``policy.confinement``).

    ``network`` is the host's configured network mode, used unless the job has the host's.
    """
    options: dict[str, Any] = {
        "security_opt": ["no-new-privileges:true"] if confined.no_new_privileges else [],
        "cap_drop": list(confined.drop_capabilities),
        "cap_add": list(confined.add_capabilities),
        "pids_limit": confined.pids_limit,
        "read_only": confined.read_only_root,
        "user": confined.user,
        "privileged": confined.privileged,
        "mounts": [
            docker.types.Mount(
                target=mount.target, source=mount.source, type="bind", read_only=mount.read_only
            )
            for mount in confined.mounts
        ],
    }
    if confined.host_network:
        options["network_mode"] = "host"
    elif network:
        options["network_mode"] = network
    if confined.host_pid:
        options["pid_mode"] = "host"
    return options
