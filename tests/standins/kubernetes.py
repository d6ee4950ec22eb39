"""A stand-in Kubernetes API server on 127.0.0.1, for the Kubernetes executor's tests.

It speaks the documented JSON shapes of ``batch/v1`` Jobs (create, read, list with label and
field selectors, watch, merge patch, delete with a propagation policy), ``core/v1`` Pods (list,
read, graceful delete, ``log`` with ``container``, ``follow`` and ``stream``) and Secrets
(create, read, list, delete; deleted with the Job that owns them), with ``Status`` objects for
errors (403 Forbidden, 404 NotFound, 409 AlreadyExists, 422 Invalid with ``details.causes``),
closely enough for the official client and its strict parsing.

Nothing runs. A Job "runs" as the Job controller and a kubelet would make it look: once it is
not suspended it gets one pod (labelled ``job-name`` and ``controller-uid``, owned by the Job),
which waits for the Secrets its environment refers to (``CreateContainerConfigError``), runs
for ``seconds``, and terminates with ``exit_code`` and ``stdout``/``stderr`` as its log; the Job
then gets its ``Complete`` or ``Failed`` condition. What a Job does is set with ``behave`` before
it is created (as the mock executor is configured): ``oom`` (exit 137, reason ``OOMKilled``),
``pull_error`` (the container waits in ``ErrImagePull``), ``no_pod`` (the controller never
creates a pod, as under a quota), ``term_seconds`` (how long the process takes to exit on
SIGTERM). Deleting a pod ends it with 143 after that time (137 if the grace period is shorter)
and removes it soon after; ``activeDeadlineSeconds`` fails the Job with ``DeadlineExceeded``.

Failure modes for the whole server, with ``fault``: ``"forbidden"`` (403, as RBAC answers),
``"unauthorized"`` (401), ``"error"`` (500) and ``"hang"`` (accepts, never answers).

Not simulated: ``ttlSecondsAfterFinished`` (Jobs stay until deleted), admission, scheduling,
events, resource quotas, authentication.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

DEFAULT_BEHAVIOUR: dict[str, Any] = {
    "seconds": 0.3,
    "exit_code": 0,
    "stdout": "",
    "stderr": "",
    "oom": False,
    "pull_error": None,
    "no_pod": False,
    "term_seconds": 0.1,
}
# How long an ended pod stays after it was deleted (the kubelet's confirmation).
REMOVE_AFTER = 0.5

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

ROUTES = [
    ("jobs", re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+))?$")),
    ("pods", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$")),
    ("log", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")),
    ("secrets", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?$")),
]
KINDS = {
    "jobs": ("batch/v1", "Job", "batch"),
    "pods": ("v1", "Pod", ""),
    "secrets": ("v1", "Secret", ""),
}


def now_text(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def body(self) -> dict:
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid, as the API server words it."""
    text = ", ".join(f"{field}: {message}" for field, reason, message in causes)
    if len(causes) > 1:
        text = f"[{text}]"
    details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [
            {"reason": reason, "message": message, "field": field}
            for field, reason, message in causes
        ],
    }
    qualified = f"{kind}.{group}" if group else kind
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


def matches_selector(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubernetesStandIn:
    """The server and its state; ``start``/``stop`` it, ``behave`` and ``fault`` configure it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.behaviour = dict(DEFAULT_BEHAVIOUR)
        self.fault: str | None = None
        self.version = 1000
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.secrets: dict[tuple[str, str], dict] = {}
        # Per object (by uid), what the simulation needs and the API does not show.
        self.sim: dict[str, dict] = {}
        # Every request: (method, path with query, headers, parsed body or None).
        self.requests: list[tuple[str, str, dict, Any]] = []
        self.deleted_jobs: list[str] = []
        self.stopping = threading.Event()
        # Open client connections: a server that stops closes them (keep-alive included).
        self.connections: set[socket.socket] = set()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------

    def start(self, port: int = 0) -> KubernetesStandIn:
        standin = self

        class Handler(StandInHandler):
            pass

        Handler.standin = standin
        self.stopping.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="kubernetes-standin", daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def restart(self) -> None:
        """Answer again, at the same address and with the same state, after ``stop``."""
        assert self.server is not None
        self.start(self.server.server_address[1])

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def behave(self, **behaviour: Any) -> None:
        """What Jobs created from now on do (see the module's docstring)."""
        unknown = set(behaviour) - set(DEFAULT_BEHAVIOUR)
        assert not unknown, f"unknown behaviour {unknown}"
        with self.lock:
            self.behaviour.update(behaviour)

    def job(self, name: str, namespace: str = "default") -> dict | None:
        with self.lock:
            self._tick()
            return copy.deepcopy(self.jobs.get((namespace, name)))

    def secrets_of(self, namespace: str = "default") -> list[dict]:
        with self.lock:
            return copy.deepcopy([s for (ns, _), s in self.secrets.items() if ns == namespace])

    def pods_of(self, job_name: str, namespace: str = "default") -> list[dict]:
        with self.lock:
            self._tick()
            return copy.deepcopy(
                [
                    p
                    for (ns, _), p in self.pods.items()
                    if ns == namespace and p["metadata"]["labels"].get("job-name") == job_name
                ]
            )

    # -- the simulation ----------------------------------------------------------------

    def _bump(self, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def _tick(self) -> None:
        """Advance every Job and pod to what they are now."""
        now = time.time()
        for key, job in list(self.jobs.items()):
            self._advance_job(key, job, now)
        for key, pod in list(self.pods.items()):
            sim = self.sim[pod["metadata"]["uid"]]
            if sim.get("remove_at") is not None and now >= sim["remove_at"]:
                del self.pods[key]

    def _advance_job(self, key: tuple[str, str], job: dict, now: float) -> None:
        namespace, name = key
        sim = self.sim[job["metadata"]["uid"]]
        status = job["status"]
        if self._finished(job):
            return
        if job["spec"].get("suspend"):
            return
        if "startTime" not in status:
            status["startTime"] = now_text(now)
            sim["started"] = now
            status["active"] = 0
            self._bump(job)
        pod = self.pods.get((namespace, sim["pod"])) if sim.get("pod") else None
        if sim.get("pod") is None and not sim["behaviour"]["no_pod"]:
            pod = self._create_pod(namespace, job, now)
            sim["pod"] = pod["metadata"]["name"]
            status["active"] = 1
            status["ready"] = 0
            self._bump(job)
        if pod is not None:
            self._advance_pod(namespace, pod, now)
            ready = int(pod["status"]["phase"] == "Running" and self._ready(pod))
            if status.get("ready") != ready and not self._pod_ended(pod):
                status["ready"] = ready
                self._bump(job)
            if self._pod_ended(pod):
                succeeded = pod["status"]["phase"] == "Succeeded"
                status["active"] = 0
                status["ready"] = 0
                if succeeded:
                    status["succeeded"] = 1
                    self._condition(job, "SuccessCriteriaMet", "CompletionsReached", "", now)
                    self._condition(job, "Complete", "CompletionsReached", "", now)
                    status["completionTime"] = now_text(now)
                else:
                    status["failed"] = 1
                    message = "Job has reached the specified backoff limit"
                    self._condition(job, "FailureTarget", "BackoffLimitExceeded", message, now)
                    self._condition(job, "Failed", "BackoffLimitExceeded", message, now)
                self._bump(job)
                return
        elif sim.get("pod") is not None:
            # Its pod was removed before it ended (deleted with no grace): a failure.
            status["active"] = 0
            status["failed"] = 1
            message = "Job has reached the specified backoff limit"
            self._condition(job, "Failed", "BackoffLimitExceeded", message, now)
            self._bump(job)
            return
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline is not None and now - sim["started"] >= deadline:
            message = "Job was active longer than specified deadline"
            if pod is not None:
                self._delete_pod(namespace, pod, 0, now)
                self._advance_pod(namespace, pod, now)
                self.pods.pop((namespace, pod["metadata"]["name"]), None)
            status["active"] = 0
            status["ready"] = 0
            status["failed"] = 1 if pod is not None else 0
            self._condition(job, "FailureTarget", "DeadlineExceeded", message, now)
            self._condition(job, "Failed", "DeadlineExceeded", message, now)
            self._bump(job)

    @staticmethod
    def _finished(job: dict) -> bool:
        return any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True"
            for c in job["status"].get("conditions", [])
        )

    def _condition(self, job: dict, kind: str, reason: str, message: str, now: float) -> None:
        conditions = job["status"].setdefault("conditions", [])
        conditions.append(
            {
                "type": kind,
                "status": "True",
                "lastProbeTime": now_text(now),
                "lastTransitionTime": now_text(now),
                "reason": reason,
                "message": message,
            }
        )

    def _create_pod(self, namespace: str, job: dict, now: float) -> dict:
        job_name = job["metadata"]["name"]
        name = (
            f"{job_name}-{''.join(secrets.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
        )
        template = copy.deepcopy(job["spec"]["template"])
        uid = str(uuid.uuid4())
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": f"{job_name}-",
                "namespace": namespace,
                "uid": uid,
                "creationTimestamp": now_text(now),
                "labels": template["metadata"].get("labels", {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "finalizers": ["batch.kubernetes.io/job-tracking"],
            },
            "spec": {**template["spec"], "nodeName": "standin-node"},
            "status": {"phase": "Pending", "qosClass": "BestEffort", "conditions": []},
        }
        behaviour = self.sim[job["metadata"]["uid"]]["behaviour"]
        self.sim[uid] = {"created": now, "behaviour": behaviour, "run_start": None}
        self._bump(pod)
        self.pods[(namespace, name)] = pod
        self._advance_pod(namespace, pod, now)
        return pod

    @staticmethod
    def _pod_ended(pod: dict) -> bool:
        return pod["status"]["phase"] in ("Succeeded", "Failed")

    @staticmethod
    def _ready(pod: dict) -> bool:
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"]
        )

    def _container_status(self, pod: dict, state: dict, ready: bool) -> dict:
        container = pod["spec"]["containers"][0]
        return {
            "name": container["name"],
            "image": container["image"],
            "imageID": ""
            if "waiting" in state
            else f"docker.io/{container['image']}@sha256:" + "0" * 64,
            "containerID": None if "waiting" in state else f"containerd://{pod['metadata']['uid']}",
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
            "lastState": {},
        }

    def _missing_secret(self, namespace: str, pod: dict) -> str | None:
        for var in pod["spec"]["containers"][0].get("env", []):
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref and (namespace, ref["name"]) not in self.secrets:
                return ref["name"]
        return None

    def _set_phase(self, pod: dict, phase: str, ready: bool, state: dict) -> None:
        status = pod["status"]
        status["phase"] = phase
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_text()},
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": now_text(),
            },
        ]
        status["containerStatuses"] = [self._container_status(pod, state, ready)]
        status.setdefault("hostIP", "10.0.0.1")
        status.setdefault("podIP", "10.1.0.7")
        status.setdefault("startTime", pod["metadata"]["creationTimestamp"])
        self._bump(pod)

    def _advance_pod(self, namespace: str, pod: dict, now: float) -> None:
        sim = self.sim[pod["metadata"]["uid"]]
        behaviour = sim["behaviour"]
        if self._pod_ended(pod):
            return
        if sim.get("kill_at") is not None and now >= sim["kill_at"]:
            if sim["run_start"] is None:
                sim["remove_at"] = now
                return
            self._terminate(pod, sim, sim["kill_code"], "Error", now)
            sim["remove_at"] = now + REMOVE_AFTER
            return
        if sim["run_start"] is None:
            if behaviour["pull_error"]:
                reason = "ErrImagePull"
                message = behaviour["pull_error"]
            elif missing := self._missing_secret(namespace, pod):
                reason, message = "CreateContainerConfigError", f'secret "{missing}" not found'
            else:
                sim["run_start"] = now
                sim["ends_at"] = now + behaviour["seconds"]
                self._set_phase(pod, "Running", True, {"running": {"startedAt": now_text(now)}})
                return
            current = pod["status"].get("containerStatuses")
            if not current or current[0]["state"].get("waiting", {}).get("reason") != reason:
                self._set_phase(
                    pod, "Pending", False, {"waiting": {"reason": reason, "message": message}}
                )
            return
        if now >= sim["ends_at"]:
            if behaviour["oom"]:
                self._terminate(pod, sim, 137, "OOMKilled", now)
            else:
                code = behaviour["exit_code"]
                self._terminate(pod, sim, code, "Completed" if code == 0 else "Error", now)

    def _terminate(self, pod: dict, sim: dict, code: int, reason: str, now: float) -> None:
        sim["ended"] = now
        sim["exit_code"] = code
        state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": now_text(sim["run_start"]),
                "finishedAt": now_text(now),
                "containerID": f"containerd://{pod['metadata']['uid']}",
            }
        }
        self._set_phase(pod, "Succeeded" if code == 0 else "Failed", False, state)

    def _delete_pod(self, namespace: str, pod: dict, grace: int, now: float) -> None:
        sim = self.sim[pod["metadata"]["uid"]]
        if pod["metadata"].get("deletionTimestamp"):
            return
        pod["metadata"]["deletionTimestamp"] = now_text(now + grace)
        pod["metadata"]["deletionGracePeriodSeconds"] = grace
        if self._pod_ended(pod):
            sim["remove_at"] = now
        else:
            term = sim["behaviour"]["term_seconds"]
            if grace >= term:
                sim["kill_at"], sim["kill_code"] = now + term, 143
            else:
                sim["kill_at"], sim["kill_code"] = now + grace, 137
        self._bump(pod)

    def _log(self, pod: dict, stream: str | None) -> str:
        sim = self.sim[pod["metadata"]["uid"]]
        behaviour = sim["behaviour"]
        if sim["run_start"] is None:
            return ""
        out, err = behaviour["stdout"], behaviour["stderr"]
        if sim.get("ended") is None or sim["ended"] < sim["ends_at"]:
            # The command prints at its end: nothing yet, or nothing if it was stopped.
            out, err = "", ""
        if stream == "Stdout":
            return out
        if stream == "Stderr":
            return err
        return out + err

    # -- the API ------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        route = next(((r, m) for r, p in ROUTES if (m := p.match(path))), None)
        if route is not None:
            resource, match = route
            namespace, name = match["ns"], match["name"]
        else:
            if path == "/version" and method == "GET":
                return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-standin"}
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        with self.lock:
            self._tick()
            if self.fault in ("forbidden", "unauthorized"):
                return self._refuse(method, resource, namespace, name, query)
            handler = getattr(self, f"_{method.lower()}_{resource}", None)
            if handler is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
            return handler(namespace, name, query, body)

    def _refuse(self, method, resource, namespace, name, query):
        if self.fault == "unauthorized":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(method, "get")
        if method == "GET" and name is None:
            verb = "watch" if query.get("watch") in ("true", "1") else "list"
        group = KINDS.get(resource, ("v1", "", ""))[2]
        what = "pods/log" if resource == "log" else resource
        full = f"{what}.{group}" if group else what
        message = (
            f"{full}{' ' + repr(name).replace(chr(39), chr(34)) if name else ''} is forbidden: "
            f'User "system:serviceaccount:{namespace}:container-manager" cannot {verb} resource '
            f'"{resource if resource != "log" else "pods/log"}" in API group "{group}" in the '
            f'namespace "{namespace}"'
        )
        raise ApiError(
            403, "Forbidden", message, {"name": name or "", "group": group, "kind": what}
        )

    def _not_found(self, resource: str, name: str) -> ApiError:
        group = KINDS[resource][2]
        full = f"{resource}.{group}" if group else resource
        return ApiError(
            404,
            "NotFound",
            f'{full} "{name}" not found',
            {"name": name, "group": group, "kind": resource},
        )

    def _list(self, resource: str, store: dict, namespace: str, query: dict) -> dict:
        api_version, kind, _ = KINDS[resource]
        items = [copy.deepcopy(o) for (ns, _), o in store.items() if ns == namespace]
        if selector := query.get("labelSelector"):
            items = [
                o for o in items if matches_selector(o["metadata"].get("labels", {}), selector)
            ]
        if fields := query.get("fieldSelector"):
            for term in fields.split(","):
                key, _, value = term.partition("=")
                if key == "metadata.name":
                    items = [o for o in items if o["metadata"]["name"] == value.lstrip("=")]
        items.sort(key=lambda o: o["metadata"]["name"])
        if limit := query.get("limit"):
            items = items[: int(limit)]
        for item in items:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self.version)},
            "items": items,
        }

    # Jobs

    def _get_jobs(self, namespace, name, query, body):
        if name is None:
            if query.get("watch") in ("true", "1"):
                return 200, WatchStream(self, namespace, query)
            return 200, self._list("jobs", self.jobs, namespace, query)
        job = self.jobs.get((namespace, name))
        if job is None:
            raise self._not_found("jobs", name)
        return 200, job

    def _post_jobs(self, namespace, name, query, body):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        job = copy.deepcopy(body)
        metadata = job.setdefault("metadata", {})
        job_name = metadata.get("name", "")
        self._validate_job(job, job_name)
        if (namespace, job_name) in self.jobs:
            raise ApiError(
                409,
                "AlreadyExists",
                f'jobs.batch "{job_name}" already exists',
                {"name": job_name, "group": "batch", "kind": "jobs"},
            )
        uid = str(uuid.uuid4())
        metadata.update(namespace=namespace, uid=uid, generation=1, creationTimestamp=now_text())
        spec = job["spec"]
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template_labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
        template_labels.update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": job_name,
                "controller-uid": uid,
                "job-name": job_name,
            }
        )
        pod_spec = spec["template"]["spec"]
        pod_spec.setdefault("terminationGracePeriodSeconds", 30)
        pod_spec.setdefault("dnsPolicy", "ClusterFirst")
        pod_spec.setdefault("schedulerName", "default-scheduler")
        pod_spec.setdefault("securityContext", {})
        for container in pod_spec["containers"]:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            latest = ":" not in container["image"].rsplit("/", 1)[-1] or container[
                "image"
            ].endswith(":latest")
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        job["status"] = {}
        job["apiVersion"], job["kind"] = "batch/v1", "Job"
        self.sim[uid] = {"behaviour": dict(self.behaviour), "pod": None}
        self._bump(job)
        self.jobs[(namespace, job_name)] = job
        self._tick()
        return 201, job

    def _validate_job(self, job: dict, name: str) -> None:
        causes = []
        if not name:
            causes.append(
                (
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                )
            )
        elif len(name) > 63 or not DNS_LABEL.match(name):
            causes.append(
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower '
                    "case alphanumeric characters or '-', and must start and end with an "
                    "alphanumeric character (at most 63 characters)",
                )
            )
        for where, labels in (
            ("metadata.labels", job["metadata"].get("labels") or {}),
            (
                "spec.template.metadata.labels",
                ((job.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels")
                or {},
            ),
        ):
            for key, value in labels.items():
                prefix, _, key_name = key.rpartition("/")
                if (
                    (prefix and not all(DNS_LABEL.match(p) for p in prefix.split(".")))
                    or len(key_name) > 63
                    or not LABEL_NAME.match(key_name)
                ):
                    causes.append(
                        (
                            where,
                            "FieldValueInvalid",
                            f'Invalid value: "{key}": name part must consist of alphanumeric '
                            "characters",
                        )
                    )
                if len(str(value)) > 63 or not LABEL_VALUE.match(str(value)):
                    causes.append(
                        (
                            f"{where}",
                            "FieldValueInvalid",
                            f'Invalid value: "{value}": a valid label must be an empty string or '
                            "consist of alphanumeric characters",
                        )
                    )
        spec = job.get("spec") or {}
        template = spec.get("template") or {}
        pod_spec = template.get("spec") or {}
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            causes.append(
                (
                    "spec.template.spec.restartPolicy",
                    "FieldValueNotSupported",
                    'Unsupported value: supported values: "OnFailure", "Never"',
                )
            )
        containers = pod_spec.get("containers") or []
        if not containers:
            causes.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
        for index, container in enumerate(containers):
            at = f"spec.template.spec.containers[{index}]"
            if not container.get("image"):
                causes.append((f"{at}.image", "FieldValueRequired", "Required value"))
            for env_index, var in enumerate(container.get("env") or []):
                if not ENV_NAME.match(var.get("name", "")):
                    causes.append(
                        (
                            f"{at}.env[{env_index}].name",
                            "FieldValueInvalid",
                            f'Invalid value: "{var.get("name")}": a valid environment variable '
                            "name must consist of alphabetic characters, digits, '_', '-', or '.'",
                        )
                    )
            context = container.get("securityContext") or {}
            if context.get("privileged") and context.get("allowPrivilegeEscalation") is False:
                causes.append(
                    (
                        f"{at}.securityContext",
                        "FieldValueInvalid",
                        "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                    )
                )
        for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            value = spec.get(key)
            if value is not None and (value < 0 or (key == "activeDeadlineSeconds" and value == 0)):
                causes.append(
                    (
                        f"spec.{key}",
                        "FieldValueInvalid",
                        f"Invalid value: {value}: must be greater than or equal to 0",
                    )
                )
        if causes:
            raise invalid("Job", "batch", name, causes)

    def _patch_jobs(self, namespace, name, query, body):
        job = self.jobs.get((namespace, name))
        if job is None or name is None:
            raise self._not_found("jobs", name or "")
        if isinstance(body, list):  # JSON patch: the operations a client needs here
            patched = copy.deepcopy(job)
            for op in body:
                parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
                target = patched
                for part in parts[:-1]:
                    target = target[part]
                if op["op"] in ("add", "replace"):
                    target[parts[-1]] = op["value"]
                elif op["op"] == "remove":
                    target.pop(parts[-1], None)
        else:
            patched = merge_patch(job, body)
        immutable = ("template", "selector", "completions", "completionMode")
        for key in immutable:
            if patched["spec"].get(key) != job["spec"].get(key):
                raise invalid(
                    "Job",
                    "batch",
                    name,
                    [(f"spec.{key}", "FieldValueInvalid", "field is immutable")],
                )
        patched["metadata"]["generation"] = job["metadata"].get("generation", 1) + 1
        patched["status"] = job["status"]
        self.jobs[(namespace, name)] = patched
        self._bump(patched)
        self._tick()
        return 200, patched

    def _delete_jobs(self, namespace, name, query, body):
        job = self.jobs.get((namespace, name)) if name else None
        if job is None:
            raise self._not_found("jobs", name or "")
        policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
        # The API's default for Jobs is to orphan their pods (kubectl asks for Background).
        policy = policy or "Orphan"
        uid = job["metadata"]["uid"]
        del self.jobs[(namespace, name)]
        self.deleted_jobs.append(name)
        for store in (self.pods, self.secrets):
            for key, obj in list(store.items()):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o["uid"] == uid for o in owners):
                    if policy == "Orphan":
                        obj["metadata"]["ownerReferences"] = [o for o in owners if o["uid"] != uid]
                    else:
                        del store[key]
        self.version += 1
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid},
        }

    # Pods

    def _get_pods(self, namespace, name, query, body):
        if name is None:
            return 200, self._list("pods", self.pods, namespace, query)
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise self._not_found("pods", name)
        return 200, pod

    def _delete_pods(self, namespace, name, query, body):
        pod = self.pods.get((namespace, name)) if name else None
        if pod is None:
            raise self._not_found("pods", name or "")
        grace = query.get("gracePeriodSeconds")
        if grace is None:
            grace = (body or {}).get("gracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        self._delete_pod(namespace, pod, int(grace), time.time())
        self._tick()
        return 200, pod

    def _get_log(self, namespace, name, query, body):
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise self._not_found("pods", name)
        container = query.get("container") or pod["spec"]["containers"][0]["name"]
        if container not in [c["name"] for c in pod["spec"]["containers"]]:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        stream = query.get("stream")
        if stream not in (None, "All", "Stdout", "Stderr"):
            raise ApiError(
                422,
                "Invalid",
                f'PodLogOptions "{name}" is invalid: stream: Unsupported value: "{stream}"',
            )
        if self.sim[pod["metadata"]["uid"]]["run_start"] is None:
            waiting = pod["status"]["containerStatuses"][0]["state"].get("waiting", {})
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: '
                f"{waiting.get('reason', 'ContainerCreating')}",
            )
        if query.get("follow") in ("true", "1"):
            return 200, LogStream(self, namespace, name, stream)
        return 200, TextBody(self._log(pod, stream))

    # Secrets

    def _get_secrets(self, namespace, name, query, body):
        if name is None:
            return 200, self._list("secrets", self.secrets, namespace, query)
        secret = self.secrets.get((namespace, name))
        if secret is None:
            raise self._not_found("secrets", name)
        return 200, secret

    def _post_secrets(self, namespace, name, query, body):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        secret = copy.deepcopy(body)
        metadata = secret.setdefault("metadata", {})
        secret_name = metadata.get("name", "")
        causes = []
        if not DNS_LABEL.match(secret_name.replace(".", "-")) or len(secret_name) > 253:
            causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{secret_name}"'))
        data = secret.setdefault("data", {})
        for key, value in (secret.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        for key, value in data.items():
            if not SECRET_KEY.match(key):
                causes.append(
                    (
                        f"data[{key}]",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": a valid config key must consist of '
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                causes.append((f"data[{key}]", "FieldValueInvalid", "illegal base64 data"))
        kind = secret.get("type", "Opaque")
        if kind == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" not in data:
            causes.append(("data[.dockerconfigjson]", "FieldValueRequired", "Required value"))
        for owner in metadata.get("ownerReferences") or []:
            for field in ("apiVersion", "kind", "name", "uid"):
                if not owner.get(field):
                    causes.append(
                        (
                            f"metadata.ownerReferences.{field}",
                            "FieldValueRequired",
                            "Required value",
                        )
                    )
        if causes:
            raise invalid("Secret", "", secret_name, causes)
        if (namespace, secret_name) in self.secrets:
            raise ApiError(
                409,
                "AlreadyExists",
                f'secrets "{secret_name}" already exists',
                {"name": secret_name, "kind": "secrets"},
            )
        secret["type"] = kind
        metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now_text())
        secret["apiVersion"], secret["kind"] = "v1", "Secret"
        self._bump(secret)
        self.secrets[(namespace, secret_name)] = secret
        return 201, secret

    def _delete_secrets(self, namespace, name, query, body):
        if self.secrets.pop((namespace, name or ""), None) is None:
            raise self._not_found("secrets", name or "")
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}


class TextBody(str):
    """A plain-text answer (a pod's log)."""


class WatchStream:
    """A watch on Jobs: one JSON event a line while the request lasts (``timeoutSeconds``).

    Changes are sent as the stand-in sees them, at most every 50 ms: several changes in
    between arrive as one MODIFIED event with the latest object, which real watch clients
    must handle anyway (they can only rely on seeing the latest state)."""

    def __init__(self, standin: KubernetesStandIn, namespace: str, query: dict):
        self.standin, self.namespace, self.query = standin, namespace, query

    def events(self):
        standin = self.standin
        timeout = float(self.query.get("timeoutSeconds") or 1800)
        end = time.monotonic() + timeout
        since = self.query.get("resourceVersion")
        seen: dict[str, int] = {}
        first = True
        while time.monotonic() < end and not standin.stopping.is_set():
            if standin.fault is not None:
                return
            lines = []
            with standin.lock:
                standin._tick()
                current = standin._list("jobs", standin.jobs, self.namespace, self.query)["items"]
                names = {job["metadata"]["name"] for job in current}
                for job in current:
                    name = job["metadata"]["name"]
                    version = int(job["metadata"]["resourceVersion"])
                    if first and since in (None, "", "0"):
                        kind = "ADDED"
                    elif name not in seen and since and version <= int(since):
                        seen[name] = version
                        continue
                    elif seen.get(name) == version:
                        continue
                    else:
                        kind = "ADDED" if name not in seen and not since else "MODIFIED"
                    seen[name] = version
                    lines.append(
                        {"type": kind, "object": {"apiVersion": "batch/v1", "kind": "Job", **job}}
                    )
                for name in set(seen) - names:
                    del seen[name]
                    gone = {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "metadata": {
                            "name": name,
                            "namespace": self.namespace,
                            "resourceVersion": str(standin.version),
                        },
                    }
                    lines.append({"type": "DELETED", "object": gone})
            first = False
            for line in lines:
                yield (json.dumps(line) + "\n").encode()
            time.sleep(0.05)


class LogStream:
    """``follow=true``: the log, sent when the container has ended (it prints at its end)."""

    def __init__(self, standin: KubernetesStandIn, namespace: str, name: str, stream):
        self.standin, self.namespace, self.name, self.stream = standin, namespace, name, stream

    def events(self):
        standin = self.standin
        while not standin.stopping.is_set():
            with standin.lock:
                standin._tick()
                pod = standin.pods.get((self.namespace, self.name))
                if pod is None:
                    return
                if standin._pod_ended(pod):
                    yield standin._log(pod, self.stream).encode()
                    return
            time.sleep(0.05)


class StandInHandler(BaseHTTPRequestHandler):
    standin: KubernetesStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def setup(self):
        super().setup()
        self.standin.connections.add(self.connection)

    def finish(self):
        self.standin.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self, method: str) -> None:
        standin = self.standin
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        # The official client posts some bodies without a Content-Type: JSON all the same.
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        standin.requests.append((method, self.path, dict(self.headers), body))
        if standin.fault == "hang":
            while standin.fault == "hang" and not standin.stopping.wait(0.05):
                pass
            self.close_connection = True
            return
        if standin.fault == "error":
            return self._send_json(
                500,
                ApiError(
                    500, "InternalError", "Internal error occurred: etcdserver: request timed out"
                ).body(),
            )
        try:
            code, answer = standin.handle(method, parts.path, query, body)
        except ApiError as error:
            return self._send_json(error.code, error.body())
        if isinstance(answer, WatchStream | LogStream):
            return self._send_stream(
                answer, "application/json" if isinstance(answer, WatchStream) else "text/plain"
            )
        if isinstance(answer, TextBody):
            data = str(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._send_json(code, answer)

    def _send_json(self, code: int, answer: Any) -> None:
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, answer, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in answer.events():
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PATCH(self):
        self._serve("PATCH")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")


# -- pytest -------------------------------------------------------------------------------------


@pytest.fixture
def kubernetes_standin():
    """A fresh stand-in API server for one test (the official client is needed to talk to it:
    a loud failure under CI without it, else a skip)."""
    try:
        import kubernetes  # noqa: F401
    except ImportError as error:
        message = f"the kubernetes client is not installed ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    standin = KubernetesStandIn().start()
    yield standin
    standin.stop()


def use_standin(request) -> KubernetesStandIn:
    """The ``kubernetes_standin`` fixture from any test (the fixture lives in this module,
    registered as a plugin the first time)."""
    manager = request.config.pluginmanager
    if not manager.has_plugin(__name__):
        manager.register(sys.modules[__name__], __name__)
    return request.getfixturevalue("kubernetes_standin")
