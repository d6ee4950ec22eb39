"""What a job's attempt becomes on Cloud Run: a Cloud Run Job (the definition: image,
resources, options) and one execution of it with per-run overrides.

Definitions: the v2 API can override only a run's args, env, task count and timeout, so
everything else (image, working dir, memory, CPUs, GPUs, service account, VPC) lives in the
Job. Its id is a hash of all of that and the host's name (``cm-<hash>``): jobs that need the
same definition share one, a job that needs another (a different image or memory limit) gets
its own, so two workers never rewrite a definition under each other's runs. A definition that
exists with another template (edited by hand) is put back; one that matches is reused.

Overrides of each run: ``args`` (the job's argv: like Docker's ``command``, it replaces the
image's CMD and is passed to its ENTRYPOINT), ``env`` (the job's environment plus
``CONTAINER_MANAGER_JOB_ID`` / ``CONTAINER_MANAGER_ATTEMPT``, which is how an execution is
linked to its attempt: Cloud Run cannot label a single execution), ``timeout`` and
``task_count`` 1. Secrets travel in that env: they are never written into the Job, but they
are part of the execution's resource until ``cleanup`` deletes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ...conf import setting
from ...exceptions import LaunchError
from ...spec import LaunchSpec

JOB_ID_ENV = "CONTAINER_MANAGER_JOB_ID"
ATTEMPT_ENV = "CONTAINER_MANAGER_ATTEMPT"
# Labels of our Cloud Run Jobs (GCP label keys: lowercase letters, digits, - and _).
MANAGED_LABEL = "container-manager-managed"
HOST_LABEL = "container-manager-host"
CONTAINER_NAME = "job"
GPU_RESOURCE = "nvidia.com/gpu"
GOOGLE_REGISTRIES = re.compile(r"^([a-z0-9-]+\.)?(pkg\.dev|gcr\.io)$")


def host_label(host_name: str) -> str:
    """A label value naming the host: its name made label-safe, plus a hash so two names that
    look alike once made safe stay apart."""
    safe = re.sub(r"[^a-z0-9_-]+", "-", host_name.lower()).strip("-")[:50]
    digest = hashlib.sha256(host_name.encode()).hexdigest()[:8]
    return f"{safe}-{digest}" if safe else digest


def refusal(spec: LaunchSpec, config: dict[str, Any]) -> str | None:
    """Why Cloud Run cannot run ``spec`` as the container policy promised, or None."""
    confined = spec.confinement
    impossible = []
    if confined.privileged:
        impossible.append("a privileged container")
    if confined.host_network:
        impossible.append("the host's network namespace")
    if confined.host_pid:
        impossible.append("the host's PID namespace")
    if confined.mounts:
        impossible.append("bind mounts of host directories")
    if impossible:
        return (
            f"Cloud Run Jobs cannot give a job {' or '.join(impossible)} (it has no host to "
            "share; volumes are Cloud Storage, NFS or in-memory): run this job on a Docker host"
        )
    no_control = []
    extra = sorted(set(confined.add_capabilities) - set(setting("DEFAULT_CAPABILITIES")))
    if extra:
        no_control.append(f"added capabilities ({', '.join(extra)})")
    if confined.read_only_root:
        no_control.append("a read-only root filesystem")
    if confined.user:
        no_control.append(f"a user ({confined.user!r}; Cloud Run runs the image's USER)")
    if no_control:
        return (
            "Cloud Run Jobs offer no control over "
            + ", ".join(no_control)
            + ": refused rather than run differently than the job asks"
        )
    if spec.gpus and not config.get("gpu_type"):
        return (
            f"the job asks for {spec.gpus} GPU(s), but this Cloud Run host has no 'gpu_type' "
            "in its executor_config (e.g. 'nvidia-l4'), so it cannot provide them"
        )
    if spec.registry_auth is not None:
        registry = spec.registry_auth.registry.lower().removeprefix("https://").split("/")[0]
        if not GOOGLE_REGISTRIES.match(registry):
            return (
                f"Cloud Run pulls images with the job's service account and cannot use "
                f"registry credentials: the image's registry {registry!r} is not Artifact "
                "Registry (*.pkg.dev) or Container Registry (gcr.io). Mirror the image to "
                "Artifact Registry and grant the service account roles/artifactregistry.reader"
            )
    return None


def job_template(run: Any, spec: LaunchSpec, config: dict[str, Any], host_name: str) -> Any:
    """The Cloud Run Job (without its name) that runs ``spec``'s image as configured."""
    limits: dict[str, str] = {}
    if spec.memory_mb:
        limits["memory"] = f"{spec.memory_mb}Mi"
    if spec.cpus:
        limits["cpu"] = _cpu(spec.cpus)
    if spec.gpus:
        limits[GPU_RESOURCE] = str(spec.gpus)
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": spec.image}
    if spec.working_dir:
        container["working_dir"] = spec.working_dir
    if limits:
        container["resources"] = {"limits": limits}
    task: dict[str, Any] = {"containers": [container], "max_retries": 0}
    if config.get("service_account"):
        task["service_account"] = config["service_account"]
    if spec.gpus:
        task["node_selector"] = {"accelerator": config["gpu_type"]}
    vpc: dict[str, Any] = {}
    if config.get("vpc_connector"):
        vpc["connector"] = config["vpc_connector"]
    if config.get("vpc_network"):
        vpc["network_interfaces"] = [
            {"network": config["vpc_network"], "subnetwork": config["vpc_subnet"]}
        ]
    if vpc and config.get("vpc_egress"):
        vpc["egress"] = (
            "ALL_TRAFFIC" if config["vpc_egress"] == "all-traffic" else "PRIVATE_RANGES_ONLY"
        )
    if vpc:
        task["vpc_access"] = vpc
    labels = {MANAGED_LABEL: "true", HOST_LABEL: host_label(host_name)}
    return run.Job(
        labels=labels,
        template={"labels": labels, "task_count": 1, "parallelism": 1, "template": task},
    )


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def summary(job: Any) -> dict[str, Any]:
    """What of a Job this executor sets, as plain data: two Jobs that agree here run a job
    the same way."""
    template = job.template
    task = template.template
    containers = []
    for container in task.containers:
        containers.append(
            {
                "name": container.name,
                "image": container.image,
                "command": list(container.command),
                "args": list(container.args),
                "env": sorted((e.name, e.value) for e in container.env),
                "working_dir": container.working_dir,
                "limits": dict(container.resources.limits),
            }
        )
    vpc = task.vpc_access
    egress = vpc.egress.name if int(vpc.egress) else ""
    return {
        "labels": dict(job.labels),
        "execution_labels": dict(template.labels),
        "task_count": template.task_count,
        "parallelism": template.parallelism,
        "containers": containers,
        # None when unset: Cloud Run then retries 3 times.
        "max_retries": task.max_retries if "max_retries" in task else None,
        "service_account": task.service_account,
        "accelerator": task.node_selector.accelerator,
        "vpc": {
            "connector": vpc.connector,
            "egress": egress,
            "interfaces": [[n.network, n.subnetwork] for n in vpc.network_interfaces],
        },
    }


def covers(existing: Any, desired: Any) -> bool:
    """Whether ``existing`` (a summary of the Job found) has everything ``desired`` sets.

    What the executor leaves unset (empty) Cloud Run fills in with its defaults (a CPU limit,
    the default service account...): those are not differences.
    """
    if desired is None or desired == "" or desired == {} or desired == []:
        return True
    if isinstance(desired, dict):
        return isinstance(existing, dict) and all(
            covers(existing.get(key), value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(desired)
            and all(covers(e, d) for e, d in zip(existing, desired, strict=True))
        )
    return bool(existing == desired)


def job_id(job: Any, host_name: str) -> str:
    """The definition's id: the same template on the same host, the same id."""
    material = json.dumps({"host": host_name, "job": summary(job)}, sort_keys=True)
    return "cm-" + hashlib.sha256(material.encode()).hexdigest()[:24]


def overrides(run: Any, spec: LaunchSpec) -> Any:
    env = [{"name": name, "value": value} for name, value in spec.env.items()]
    env += [
        {"name": JOB_ID_ENV, "value": spec.job_id},
        {"name": ATTEMPT_ENV, "value": str(spec.attempt)},
    ]
    container: dict[str, Any] = {"name": CONTAINER_NAME, "env": env}
    if spec.command:
        container["args"] = list(spec.command)
    result: dict[str, Any] = {"container_overrides": [container], "task_count": 1}
    if spec.timeout_seconds and spec.timeout_seconds > 0:
        result["timeout"] = {"seconds": int(spec.timeout_seconds)}
    return run.RunJobRequest.Overrides(result)


def attempt_of(execution: Any) -> tuple[str, int] | None:
    """(job id, attempt) an execution was started for, read from its env; None if not ours."""
    for container in execution.template.containers:
        env = {e.name: e.value for e in container.env}
        if JOB_ID_ENV in env and env.get(ATTEMPT_ENV, "").isdigit():
            return env[JOB_ID_ENV], int(env[ATTEMPT_ENV])
    return None


def check_env(spec: LaunchSpec) -> None:
    """The job's env must not claim the names that link an execution to its attempt."""
    for name in (JOB_ID_ENV, ATTEMPT_ENV):
        if name in spec.env:
            raise LaunchError(
                f"the environment variable {name} is set by the Cloud Run executor itself "
                "(it links an execution to its job); rename the job's variable"
            )
