"""What is sent to the API server for one attempt: the Job, and the Secrets it owns.

Built from the launch spec alone (plain dicts, in the API's own JSON shape), so they can be
checked without a cluster. One Job per attempt, named from the job id and the attempt; its
secret environment values and registry credentials live in Secrets owned by the Job (deleted
with it), never in the Job's spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from django.core.exceptions import ValidationError

from ...exceptions import LaunchError
from ...spec import Confinement, LaunchSpec

# Label keys: a DNS prefix and a name (the spec's "container_manager.job_id" is not one).
LABEL_PREFIX = "container-manager/"
JOB_ID_LABEL = f"{LABEL_PREFIX}job-id"
ATTEMPT_LABEL = f"{LABEL_PREFIX}attempt"
HOST_LABEL = f"{LABEL_PREFIX}host"
MANAGED_LABEL = f"{LABEL_PREFIX}managed"
# Label values are at most 63 characters of a restricted set: the exact values are annotations.
JOB_ID_ANNOTATION = f"{LABEL_PREFIX}job-id"
HOST_ANNOTATION = f"{LABEL_PREFIX}host"
# What the Job controller labels its pods with.
POD_JOB_LABEL = "job-name"
CONTAINER_NAME = "job"

DEFAULT_NAMESPACE = "default"
DEFAULT_TTL_SECONDS = 3600
DEFAULT_TIMEOUT = 30

CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "namespace": (str,),
    "api_url": (str,),
    "token_file": (str,),
    "in_cluster": (bool,),
    "kubeconfig": (str,),
    "context": (str,),
    "ttl_seconds_after_finished": (int,),
    "timeout": (int, float),
    "image_pull_policy": (str,),
    "service_account_name": (str,),
    "split_log_streams": (bool,),
    "image_pull_timeout": (int, float),
}
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_NUMERIC = re.compile(r"^[0-9]+$")


def validate_config(config: dict) -> None:
    """ValidationError naming the key when ``executor_config`` is unusable."""
    for key, value in config.items():
        if key not in CONFIG_TYPES:
            known = ", ".join(sorted(CONFIG_TYPES))
            raise ValidationError(f"unknown kubernetes option {key!r} (known: {known})")
        bool_ok = bool in CONFIG_TYPES[key]
        if (isinstance(value, bool) and not bool_ok) or not isinstance(value, CONFIG_TYPES[key]):
            raise ValidationError(f"kubernetes option {key!r} has the wrong type")
    namespace = config.get("namespace", DEFAULT_NAMESPACE)
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise ValidationError(f"kubernetes option 'namespace' {namespace!r} is not a valid name")
    if config.get("ttl_seconds_after_finished", 0) < 0:
        raise ValidationError("kubernetes option 'ttl_seconds_after_finished' cannot be negative")
    if config.get("timeout", 1) <= 0:
        raise ValidationError("kubernetes option 'timeout' must be positive")
    policy = config.get("image_pull_policy")
    if policy is not None and policy not in PULL_POLICIES:
        raise ValidationError(
            f"kubernetes option 'image_pull_policy' must be one of {', '.join(PULL_POLICIES)}"
        )
    if config.get("in_cluster") and (config.get("kubeconfig") or config.get("context")):
        raise ValidationError("kubernetes option 'in_cluster' excludes 'kubeconfig' and 'context'")


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_name(job_id: str, attempt: int) -> str:
    """``cm-<first 8 of the job id>-<hash of the whole id>-<attempt>``: a valid DNS-1123 label
    of at most 63 characters, the same for every launch of one attempt (which makes launching
    idempotent), different for two jobs whose ids share their first 8 characters."""
    head = re.sub(r"[^a-z0-9]+", "-", job_id.lower()[:8]).strip("-") or "job"
    return f"cm-{head}-{_digest(job_id)}-{attempt}"


def label_value(value: str) -> str:
    """``value`` if it is a valid label value, else a valid one derived from it (stable)."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:50].strip("-_.")
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value, 16)


def labels(spec: LaunchSpec) -> dict[str, str]:
    return {
        JOB_ID_LABEL: label_value(spec.job_id),
        ATTEMPT_LABEL: str(spec.attempt),
        HOST_LABEL: label_value(spec.host),
        MANAGED_LABEL: "true",
    }


def host_selector(host_name: str) -> str:
    return f"{MANAGED_LABEL}=true,{HOST_LABEL}={label_value(host_name)}"


def attempt_selector(job_id: str, attempt: int) -> str:
    return f"{JOB_ID_LABEL}={label_value(job_id)},{ATTEMPT_LABEL}={attempt}"


def env_secret_name(name: str) -> str:
    return f"{name}-env"


def registry_secret_name(name: str) -> str:
    return f"{name}-registry"


def secret_keys(spec: LaunchSpec) -> dict[str, str]:
    """{environment variable: its key in the env Secret}, for the secret variables."""
    keys = {}
    for index, variable in enumerate(sorted(spec.secret_names & set(spec.env))):
        keys[variable] = variable if _SECRET_KEY.match(variable) else f"env-{index}"
    return keys


def run_as(user: str | None) -> dict[str, int]:
    """``runAsUser`` / ``runAsGroup`` for ``user[:group]``; Kubernetes takes numbers only."""
    if not user:
        return {}
    name, _, group = user.partition(":")
    if not _NUMERIC.match(name) or (group and not _NUMERIC.match(group)):
        raise LaunchError(
            f"run_as_user {user!r} cannot be applied on Kubernetes, which takes numeric user "
            "and group ids only (runAsUser/runAsGroup): use e.g. '1000:1000'"
        )
    result = {"runAsUser": int(name)}
    if group:
        result["runAsGroup"] = int(group)
    return result


def security_context(confined: Confinement) -> dict[str, Any]:
    """The container ``securityContext`` for the confinement (README, Container policy)."""
    context: dict[str, Any] = {
        "capabilities": {
            "drop": [_capability(c) for c in confined.drop_capabilities],
            "add": [_capability(c) for c in confined.add_capabilities],
        },
        "readOnlyRootFilesystem": confined.read_only_root,
        "privileged": confined.privileged,
        **run_as(confined.user),
    }
    # The API refuses allowPrivilegeEscalation false on a privileged container (which has
    # every privilege anyway).
    if confined.no_new_privileges and not confined.privileged:
        context["allowPrivilegeEscalation"] = False
    return context


def _capability(name: str) -> str:
    name = name.upper()
    return name[4:] if name.startswith("CAP_") else name


def resources(spec: LaunchSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if spec.memory_mb:
        limits["memory"] = f"{spec.memory_mb}Mi"
    if spec.cpus:
        limits["cpu"] = f"{max(1, round(spec.cpus * 1000))}m"
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    # Only limits: the API server sets the requests equal to them.
    return {"limits": limits} if limits else {}


def env(spec: LaunchSpec, name: str) -> list[dict[str, Any]]:
    keys = secret_keys(spec)
    result: list[dict[str, Any]] = []
    for variable in sorted(spec.env):
        if variable in keys:
            ref = {"name": env_secret_name(name), "key": keys[variable]}
            result.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
        else:
            result.append({"name": variable, "value": spec.env[variable]})
    return result


def job_manifest(spec: LaunchSpec, config: dict, suspend: bool = False) -> dict[str, Any]:
    """The ``batch/v1`` Job running ``spec``; ``suspend`` until its Secrets exist."""
    name = job_name(spec.job_id, spec.attempt)
    confined = spec.confinement
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "env": env(spec, name),
        "securityContext": security_context(confined),
    }
    # The job's argv replaces the image's CMD and keeps its ENTRYPOINT, as on Docker.
    if spec.command:
        container["args"] = list(spec.command)
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    if limits := resources(spec):
        container["resources"] = limits
    if policy := config.get("image_pull_policy"):
        container["imagePullPolicy"] = policy
    volumes = []
    mounts = []
    for index, mount in enumerate(confined.mounts):
        volumes.append({"name": f"mount-{index}", "hostPath": {"path": mount.source}})
        mounts.append(
            {"name": f"mount-{index}", "mountPath": mount.target, "readOnly": mount.read_only}
        )
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Never",
        # The job gets no credentials to the API it runs on unless a service account says so.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if confined.host_network:
        pod_spec["hostNetwork"] = True
    if confined.host_pid:
        pod_spec["hostPID"] = True
    if volumes:
        pod_spec["volumes"] = volumes
    if spec.registry_auth is not None:
        pod_spec["imagePullSecrets"] = [{"name": registry_secret_name(name)}]
    if account := config.get("service_account_name"):
        pod_spec["serviceAccountName"] = account
    job_labels = labels(spec)
    annotations = {JOB_ID_ANNOTATION: spec.job_id, HOST_ANNOTATION: spec.host}
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": max(1, int(spec.timeout_seconds)),
        "ttlSecondsAfterFinished": int(
            config.get("ttl_seconds_after_finished", DEFAULT_TTL_SECONDS)
        ),
        "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod_spec},
    }
    if suspend:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": job_labels, "annotations": annotations},
        "spec": job_spec,
    }


def needs_secrets(spec: LaunchSpec) -> bool:
    return bool(secret_keys(spec)) or spec.registry_auth is not None


def secret_manifests(spec: LaunchSpec, owner_uid: str) -> list[dict[str, Any]]:
    """The Secrets the Job needs, owned by it (ownerReferences: deleted with it)."""
    name = job_name(spec.job_id, spec.attempt)
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": owner_uid,
        "blockOwnerDeletion": False,
        "controller": False,
    }

    def metadata(secret_name: str) -> dict[str, Any]:
        return {"name": secret_name, "labels": labels(spec), "ownerReferences": [owner]}

    secrets = []
    if keys := secret_keys(spec):
        data = {key: _b64(spec.env[variable]) for variable, key in keys.items()}
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": metadata(env_secret_name(name)),
                "type": "Opaque",
                "immutable": True,
                "data": data,
            }
        )
    if (auth := spec.registry_auth) is not None:
        token = _b64(f"{auth.username}:{auth.password}")
        config = {
            "auths": {
                auth.registry: {
                    "username": auth.username,
                    "password": auth.password,
                    "auth": token,
                }
            }
        }
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": metadata(registry_secret_name(name)),
                "type": "kubernetes.io/dockerconfigjson",
                "immutable": True,
                "data": {".dockerconfigjson": _b64(json.dumps(config))},
            }
        )
    return secrets


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
