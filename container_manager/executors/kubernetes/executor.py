"""The Kubernetes executor: a job's attempt as one ``batch/v1`` Job, from launch to deletion.

The execution id is the Job's name (its namespace is the host's). A Job whose attempt has
secret environment values or registry credentials is created suspended, its Secrets are then
created owned by it, and it is resumed: its pod never starts without them, and they are
deleted with it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError

from ... import logs
from ...exceptions import ExecutorError, ExecutorUnavailable, HostError, LaunchError
from ...output import CappedOutput
from ...spec import HostSpec, LaunchSpec
from ..base import EXITED, NOT_FOUND, RUNNING, BaseExecutor, Health, Outcome
from .connection import connect, host_problems, kubernetes_client, translate, where
from .manifests import (
    CONTAINER_NAME,
    DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
    JOB_ID_ANNOTATION,
    JOB_ID_LABEL,
    POD_JOB_LABEL,
    attempt_selector,
    host_selector,
    job_manifest,
    job_name,
    label_value,
    needs_secrets,
    secret_manifests,
    validate_config,
)

logger = logs.get_logger(__name__)

# Why a container may wait forever: the pod never ran the job.
NEVER_STARTED = {
    "ErrImagePull": "its image could not be pulled",
    "ImagePullBackOff": "its image could not be pulled",
    "InvalidImageName": "its image name is invalid",
    "ErrImageNeverPull": "its image is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "its configuration (a Secret, a ConfigMap) was missing",
    "CreateContainerError": "its container could not be created",
}
# Waiting reasons Kubernetes retries by itself (with a back-off): given up on after a while.
PULL_RETRIED = {"ErrImagePull", "ImagePullBackOff"}
DEFAULT_PULL_TIMEOUT = 300
# Seconds between looks at a pod that has not started yet, while waiting.
NOT_READY_ROUND = 5
LOG_CHUNK = 64 * 1024


class KubernetesExecutor(BaseExecutor):
    type_name = "kubernetes"

    def __init__(self, host: HostSpec):
        super().__init__(host)
        self._client: Any = None
        self._client_lock = threading.Lock()
        # What stop() saw of executions it ended whose pod is gone since: {name: Outcome}.
        self._stopped: dict[str, Outcome] = {}
        self._state_lock = threading.Lock()

    @classmethod
    def missing_client(cls) -> str | None:
        try:
            kubernetes_client()
        except ExecutorUnavailable as error:
            return str(error)
        return None

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def validate_config(cls, config):
        validate_config(config)

    @classmethod
    def validate_host(cls, host):
        if errors := host_problems(host, dict(host.config)):
            raise ValidationError(errors)

    @property
    def namespace(self) -> str:
        return str(self.config.get("namespace", DEFAULT_NAMESPACE))

    @property
    def api_timeout(self) -> float:
        return float(self.config.get("timeout", DEFAULT_TIMEOUT))

    def _api(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self.check_usable_config("Kubernetes")
                self._client = connect(self.host, self.config, self.api_timeout)
            return self._client

    @property
    def batch(self) -> Any:
        return kubernetes_client().BatchV1Api(self._api())

    @property
    def core(self) -> Any:
        return kubernetes_client().CoreV1Api(self._api())

    def _error(self, error, doing, cls=ExecutorError, spec=None) -> ExecutorError:
        if isinstance(error, ExecutorError):
            return error  # ours already (no client library, an unusable configuration)
        secrets = spec.secret_values if spec is not None else ()
        return translate(error, self.host, self.config, doing, cls, secrets)

    @staticmethod
    def _status(error: Exception) -> int | None:
        status = getattr(error, "status", None)
        return status if isinstance(status, int) and status > 0 else None

    # -- launching --------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> str:
        client = kubernetes_client()
        suspend = needs_secrets(spec)
        manifest = job_manifest(spec, self.config, suspend=suspend)  # LaunchError: run-as user
        name = manifest["metadata"]["name"]
        batch = self.batch
        doing = f"creating Job {name} for image '{spec.image}'"
        try:
            job = batch.create_namespaced_job(
                self.namespace,
                client.V1Job.from_dict(manifest),
                _request_timeout=self.api_timeout,
                # This client sends no Content-Type with a create otherwise.
                _headers={"Content-Type": "application/json"},
            )
        except Exception as error:
            if self._status(error) != 409:
                translated = self._error(error, doing, LaunchError, spec)
                if isinstance(translated, HostError) and (self._status(error) or 500) >= 500:
                    # The request may have been carried out before the answer was lost.
                    translated.maybe_started = True
                raise translated from None
            job = self._existing(spec, name)
            logger.info(
                "job %s: attempt %s has its Job %s already", spec.job_id, spec.attempt, name
            )
        if suspend and job.spec is not None and job.spec.suspend:
            try:
                self._create_secrets(spec, job)
            except ExecutorError:
                # Suspended, it never ran: remove it (with what it owns) rather than leave it.
                self._delete_job(name, quiet=True)
                raise
            self._resume(spec, name)
        return name

    def _existing(self, spec: LaunchSpec, name: str) -> Any:
        """The Job of this attempt that exists already (a launch whose answer was lost)."""
        try:
            job = self.batch.read_namespaced_job(
                name, self.namespace, _request_timeout=self.api_timeout
            )
        except Exception as error:
            raise self._error(error, f"reading Job {name}", LaunchError, spec) from None
        annotations = job.metadata.annotations or {}
        if annotations.get(JOB_ID_ANNOTATION, spec.job_id) != spec.job_id:
            raise LaunchError(
                f"Job {name} exists in namespace '{self.namespace}' on Kubernetes host "
                f"'{self.host.name}' but belongs to job {annotations.get(JOB_ID_ANNOTATION)}, "
                f"not to {spec.job_id}"
            )
        return job

    def _create_secrets(self, spec: LaunchSpec, job: Any) -> None:
        """The Job's Secrets, owned by it. One left by an earlier Job of the same name (still
        to be collected) is replaced: it would go with its owner."""
        models = kubernetes_client()
        api = self.core
        uid = job.metadata.uid
        for body in secret_manifests(spec, uid):
            secret_name = body["metadata"]["name"]
            doing = f"creating Secret {secret_name} for Job {job.metadata.name}"
            for _ in range(2):
                try:
                    api.create_namespaced_secret(
                        self.namespace,
                        models.V1Secret.from_dict(body),
                        _request_timeout=self.api_timeout,
                        _headers={"Content-Type": "application/json"},
                    )
                    break
                except Exception as error:
                    if self._status(error) != 409:
                        raise self._error(error, doing, LaunchError, spec) from None
                if self._owned_by(secret_name, uid, spec):
                    break  # created by the launch whose answer was lost

    def _owned_by(self, secret_name: str, uid: str, spec: LaunchSpec) -> bool:
        """Whether the Secret that exists is the Job's; if not, it is deleted."""
        try:
            secret = self.core.read_namespaced_secret(
                secret_name, self.namespace, _request_timeout=self.api_timeout
            )
            owners = secret.metadata.owner_references or []
            if any(owner.uid == uid for owner in owners):
                return True
            self.core.delete_namespaced_secret(
                secret_name, self.namespace, _request_timeout=self.api_timeout
            )
        except Exception as error:
            if self._status(error) != 404:
                doing = f"replacing Secret {secret_name}"
                raise self._error(error, doing, LaunchError, spec) from None
        return False

    def _resume(self, spec: LaunchSpec, name: str) -> None:
        try:
            self.batch.patch_namespaced_job(
                name,
                self.namespace,
                {"spec": {"suspend": False}},
                _request_timeout=self.api_timeout,
            )
        except Exception as error:
            translated = self._error(error, f"resuming Job {name}", LaunchError, spec)
            if isinstance(translated, HostError) and (self._status(error) or 500) >= 500:
                translated.maybe_started = True  # the Job may be running
            raise translated from None

    def find_execution(self, job_id: str, attempt: int) -> str | None:
        jobs = self._list_jobs(attempt_selector(job_id, attempt), f"looking up the Job of {job_id}")
        for job in jobs:
            annotations = job.metadata.annotations or {}
            if annotations.get(JOB_ID_ANNOTATION, job_id) == job_id:
                return str(job.metadata.name)
        return None

    def list_executions(self) -> dict[str, str]:
        jobs = self._list_jobs(host_selector(self.host.name), "listing Jobs")
        found = {}
        for job in jobs:
            annotations = job.metadata.annotations or {}
            labels = job.metadata.labels or {}
            found[str(job.metadata.name)] = annotations.get(
                JOB_ID_ANNOTATION, labels.get(JOB_ID_LABEL, "")
            )
        return found

    def _list_jobs(self, selector: str, doing: str) -> list[Any]:
        try:
            answer = self.batch.list_namespaced_job(
                self.namespace, label_selector=selector, _request_timeout=self.api_timeout
            )
        except Exception as error:
            raise self._error(error, doing) from None
        return list(answer.items or [])

    # -- following an execution -------------------------------------------------------

    def _read_job(self, name: str) -> Any | None:
        try:
            return self.batch.read_namespaced_job(
                name, self.namespace, _request_timeout=self.api_timeout
            )
        except Exception as error:
            if self._status(error) == 404:
                return None
            raise self._error(error, f"reading Job {name}") from None

    @staticmethod
    def _finished(job: Any) -> bool:
        status = job.status
        if status is None:
            return False
        for condition in status.conditions or []:
            if condition.type in ("Complete", "Failed") and condition.status == "True":
                return True
        return False

    def status(self, execution_id: str) -> str:
        job = self._read_job(execution_id)
        if job is None:
            with self._state_lock:
                return EXITED if execution_id in self._stopped else NOT_FOUND
        return EXITED if self._ended(job) else RUNNING

    def _ended(self, job: Any) -> bool:
        """The Job has finished, or its pod will never run the job: its image cannot be
        pulled (for ``image_pull_timeout`` seconds), or is invalid."""
        if self._finished(job):
            return True
        status = job.status
        if status is None or not status.active or status.ready:
            return False
        return self._stuck(job.metadata.name) is not None

    def _stuck(self, name: str) -> str | None:
        """Why the Job's pod will never run the job, if it will not."""
        pods = self._pods(name)
        if not pods:
            return None
        pod = pods[-1]
        status = self._container_status(pod)
        waiting = status.state.waiting if status and status.state else None
        if waiting is None or waiting.reason not in NEVER_STARTED:
            return None
        reason = str(waiting.reason)
        if reason in PULL_RETRIED:
            created = pod.metadata.creation_timestamp
            waited = (datetime.now(UTC) - created).total_seconds() if created else 0.0
            if waited < float(self.config.get("image_pull_timeout", DEFAULT_PULL_TIMEOUT)):
                return None
        return reason

    def wait(self, execution_id: str, timeout: float) -> bool:
        """Watch the Job until it finishes or ``timeout`` passes (a status read when the
        watch cannot be had)."""
        job = self._read_job(execution_id)
        if job is None or self._ended(job):
            return True
        if timeout is not None and timeout <= 0:
            return False
        deadline = None if timeout is None or math.isinf(timeout) else time.monotonic() + timeout
        watch_module = _watch()
        resource_version = job.metadata.resource_version
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return self.status(execution_id) != RUNNING
            round_seconds = 300 if left is None else max(1, math.ceil(left))
            if not (job.status and job.status.ready):
                # A pod that has not started may never start (its image): look at it again
                # every few seconds, as Job events do not tell.
                round_seconds = min(round_seconds, NOT_READY_ROUND)
            watcher = watch_module.Watch()
            kwargs: dict[str, Any] = {
                "field_selector": f"metadata.name={execution_id}",
                "timeout_seconds": round_seconds,
                "_request_timeout": (self.api_timeout, left if left is not None else 330),
            }
            if resource_version:
                kwargs["resource_version"] = resource_version
            try:
                for event in watcher.stream(
                    self.batch.list_namespaced_job, self.namespace, **kwargs
                ):
                    if event["type"] == "DELETED":
                        watcher.stop()
                        return True
                    job = event["object"]
                    resource_version = getattr(job.metadata, "resource_version", resource_version)
                    if self._finished(job):
                        watcher.stop()
                        return True
                    if deadline is not None and time.monotonic() >= deadline:
                        watcher.stop()
                        break
                else:
                    # The round ended (the server's timeout): has the pod got stuck?
                    if self._ended(job):
                        return True
                    continue
            except Exception as error:  # noqa: BLE001 - a read timeout, 410 Gone, a dropped watch
                logger.debug("watching Job %s: %s", execution_id, error)
                # Whatever went wrong, the Job's status says whether it ended; an unreachable
                # server makes this raise ExecutorUnavailable.
                state = self.status(execution_id)
                if state != RUNNING:
                    return True
                resource_version = None
                if self._status(error) not in (None, 410):
                    # A watch the server refuses (RBAC without "watch"): poll instead.
                    return super().wait(
                        execution_id, max(0.0, (deadline or math.inf) - time.monotonic())
                    )

    def _pods(self, name: str) -> list[Any]:
        try:
            answer = self.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"{POD_JOB_LABEL}={name}",
                _request_timeout=self.api_timeout,
            )
        except Exception as error:
            raise self._error(error, f"listing the pods of Job {name}") from None
        pods = list(answer.items or [])
        # The newest last.
        pods.sort(
            key=lambda pod: (
                pod.metadata.creation_timestamp is not None,
                pod.metadata.creation_timestamp,
            )
        )
        return pods

    @staticmethod
    def _container_status(pod: Any) -> Any | None:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            if status.name == CONTAINER_NAME:
                return status
        return None

    def harvest(self, execution_id: str, deadline: float | None = None) -> Outcome:
        job = self._read_job(execution_id)
        if job is None:
            with self._state_lock:
                stopped = self._stopped.get(execution_id)
            if stopped is not None:
                return stopped
            raise ExecutorError(
                f"Job {execution_id} no longer exists in namespace '{self.namespace}' on "
                f"Kubernetes host '{self.host.name}'"
            )
        if not self._ended(job):
            raise ExecutorError(
                f"Job {execution_id} on Kubernetes host '{self.host.name}' is still running; "
                "it can only be harvested once it has ended"
            )
        pods = self._pods(execution_id)
        errors = []
        failure = self._job_failure(job)
        if not pods:
            with self._state_lock:
                stopped = self._stopped.get(execution_id)
            if stopped is not None:
                return stopped
            counts = job.status
            had_pod = bool(counts and (counts.failed or counts.succeeded))
            what = (
                "its pod is gone (deleted, evicted or removed at the deadline): its exit code "
                "and output are lost"
                if had_pod
                else "never got a pod"
            )
            return Outcome(
                exit_code=None,
                error=f"Job {execution_id} {what}" + (f" ({failure})" if failure else ""),
            )
        pod = pods[-1]
        status = self._container_status(pod)
        terminated = status.state.terminated if status and status.state else None
        waiting = status.state.waiting if status and status.state else None
        exit_code = None
        oom_killed = False
        if terminated is not None:
            exit_code = terminated.exit_code
            oom_killed = terminated.reason == "OOMKilled"
            if oom_killed:
                limit = self._memory_limit(job)
                limit_text = f"limit {limit}" if limit else "no limit was set"
                errors.append(f"container was killed for running out of memory ({limit_text})")
            elif terminated.reason not in (None, "Completed", "Error") or terminated.message:
                errors.append(
                    "Kubernetes reported: "
                    + ": ".join(str(p) for p in (terminated.reason, terminated.message) if p)
                )
        else:
            if waiting is not None and waiting.reason:
                why = NEVER_STARTED.get(waiting.reason, "it was still waiting")
                detail = (
                    f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
                )
                errors.append(f"the job's container never started: {why} ({detail})")
            else:
                phase = pod.status.phase if pod.status else "unknown"
                errors.append(f"the job's container never ran to an end (pod phase {phase})")
            with self._state_lock:
                stopped = self._stopped.get(execution_id)
            if stopped is not None and stopped.exit_code is not None:
                exit_code = stopped.exit_code
        if failure and (exit_code is None or "DeadlineExceeded" in failure):
            errors.append(f"the Job failed: {failure}")
        stdout, stderr = self._output(pod.metadata.name, deadline) if terminated else ("", "")
        return Outcome(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            oom_killed=oom_killed,
            error="; ".join(errors),
        )

    def _output(self, pod_name: str, deadline: float | None) -> tuple[str, str]:
        """(stdout, stderr): Kubernetes serves a container's two streams merged, so the log
        is stdout, unless ``split_log_streams`` asks for them apart (a cluster with the
        ``PodLogsQuerySplitStreams`` feature)."""
        if not self.config.get("split_log_streams"):
            return self._read_log(pod_name, deadline).text(), ""
        stdout = self._read_log(pod_name, deadline, "Stdout").text()
        return stdout, self._read_log(pod_name, deadline, "Stderr").text()

    @staticmethod
    def _job_failure(job: Any) -> str:
        for condition in (job.status.conditions or []) if job.status else []:
            if condition.type == "Failed" and condition.status == "True":
                return ": ".join(str(p) for p in (condition.reason, condition.message) if p)
        return ""

    @staticmethod
    def _memory_limit(job: Any) -> str | None:
        try:
            container = job.spec.template.spec.containers[0]
            return container.resources.limits.get("memory")
        except (AttributeError, IndexError, TypeError):
            return None

    def _read_log(
        self, pod_name: str, deadline: float | None, stream: str | None = None
    ) -> CappedOutput:
        output = CappedOutput()
        extra = {"stream": stream} if stream else {}
        try:
            response = self.core.read_namespaced_pod_log(
                pod_name,
                self.namespace,
                container=CONTAINER_NAME,
                **extra,
                _preload_content=False,
                _request_timeout=self._read_timeout(deadline),
            )
        except Exception as error:
            if self._status(error) in (400, 404):
                output.lost_before(f"the log of pod {pod_name} is gone ({self._status(error)})")
                return output
            raise self._error(error, f"reading the log of pod {pod_name}") from None
        try:
            for chunk in response.stream(LOG_CHUNK, decode_content=True):
                output.feed(chunk)
                if deadline is not None and time.monotonic() >= deadline:
                    output.cut_short("the time allowed to read the output ran out")
                    break
        except Exception as error:  # noqa: BLE001 - keep what was read
            output.cut_short(f"reading the log failed: {type(error).__name__}")
        finally:
            response.release_conn()
        return output

    def _read_timeout(self, deadline: float | None) -> Any:
        if deadline is None:
            return self.api_timeout
        return (self.api_timeout, max(0.1, deadline - time.monotonic()))

    def stream_logs(self, execution_id: str, follow: bool = False) -> Iterator[bytes]:
        pods = self._pods(execution_id)
        if not pods:
            raise ExecutorError(
                f"Job {execution_id} has no pod on Kubernetes host '{self.host.name}'"
            )
        pod_name = pods[-1].metadata.name
        try:
            response = self.core.read_namespaced_pod_log(
                pod_name,
                self.namespace,
                container=CONTAINER_NAME,
                follow=follow,
                _preload_content=False,
                _request_timeout=None if follow else self.api_timeout,
            )
        except Exception as error:
            raise self._error(error, f"reading the log of pod {pod_name}") from None
        try:
            yield from response.stream(LOG_CHUNK, decode_content=True)
        finally:
            response.release_conn()

    # -- ending -----------------------------------------------------------------------

    def stop(self, execution_id: str, grace_seconds: float) -> None:
        """Delete the Job's pod with ``grace_seconds`` to end (SIGTERM, then SIGKILL); with
        ``backoffLimit: 0`` the Job then fails for good. A Job without a pod yet is deleted.

        Waits (about the grace period) for the pod to end, keeping its exit code and log:
        the pod object goes away soon after, and the Job stays for harvest and cleanup.
        """
        grace = max(0, math.ceil(grace_seconds))
        pods = [p for p in self._pods(execution_id) if not self._pod_ended(p)]
        if not pods:
            job = self._read_job(execution_id)
            if job is None or self._finished(job):
                return
            if not self._pods(execution_id):
                with self._state_lock:
                    self._stopped[execution_id] = Outcome(
                        exit_code=None,
                        error=f"Job {execution_id} was stopped before its pod started",
                    )
                self._delete_job(execution_id)
            return
        client = kubernetes_client()
        for pod in pods:
            try:
                self.core.delete_namespaced_pod(
                    pod.metadata.name,
                    self.namespace,
                    grace_period_seconds=grace,
                    body=client.V1DeleteOptions(grace_period_seconds=grace),
                    _request_timeout=self.api_timeout,
                )
            except Exception as error:
                if self._status(error) != 404:
                    raise self._error(error, f"stopping pod {pod.metadata.name}") from None
        self._remember_end(execution_id, pods[-1].metadata.name, grace + 5.0)

    @staticmethod
    def _pod_ended(pod: Any) -> bool:
        return bool(pod.status and pod.status.phase in ("Succeeded", "Failed"))

    def _remember_end(self, execution_id: str, pod_name: str, seconds: float) -> None:
        """Follow a stopped pod until it has ended; keep its exit code and log."""
        deadline = time.monotonic() + seconds
        last: Outcome | None = None
        while time.monotonic() < deadline:
            try:
                pod = self.core.read_namespaced_pod(
                    pod_name, self.namespace, _request_timeout=self.api_timeout
                )
            except Exception as error:
                if self._status(error) == 404:
                    break
                raise self._error(error, f"reading pod {pod_name}") from None
            status = self._container_status(pod)
            terminated = status.state.terminated if status and status.state else None
            if terminated is not None:
                stdout, stderr = self._output(pod_name, time.monotonic() + self.api_timeout)
                last = Outcome(exit_code=terminated.exit_code, stdout=stdout, stderr=stderr)
                break
            time.sleep(0.1)
        with self._state_lock:
            self._stopped[execution_id] = last or Outcome(
                exit_code=None,
                error=f"Job {execution_id} was stopped; its pod's exit code is unknown",
            )

    def _delete_job(self, name: str, quiet: bool = False) -> None:
        client = kubernetes_client()
        try:
            self.batch.delete_namespaced_job(
                name,
                self.namespace,
                propagation_policy="Background",
                body=client.V1DeleteOptions(propagation_policy="Background"),
                _request_timeout=self.api_timeout,
            )
        except Exception as error:
            if self._status(error) == 404:
                return
            if quiet:
                logger.warning("could not delete Job %s: %s", name, error)
                return
            raise self._error(error, f"deleting Job {name}") from None

    def cleanup(self, execution_id: str) -> None:
        """Delete the Job; its pods and Secrets go with it (ownerReferences)."""
        self._delete_job(execution_id)
        with self._state_lock:
            self._stopped.pop(execution_id, None)

    # -- health -----------------------------------------------------------------------

    def health_check(self) -> Health:
        try:
            self.batch.list_namespaced_job(
                self.namespace, limit=1, _request_timeout=self.api_timeout
            )
        except ExecutorError as error:
            return Health(False, str(error))
        except Exception as error:  # noqa: BLE001 - translated below
            return Health(False, str(self._error(error, "listing Jobs")))
        return Health(
            True,
            f"Kubernetes API of host '{self.host.name}' ({where(self.host, self.config)}) "
            f"answers; Jobs in namespace '{self.namespace}' can be listed",
        )


def _watch() -> Any:
    import importlib

    kubernetes_client()  # ExecutorUnavailable when the library is missing
    return importlib.import_module("kubernetes.watch")


__all__ = ["KubernetesExecutor", "job_name", "label_value"]
