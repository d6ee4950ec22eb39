"""A local stand-in for the Cloud Run Admin API v2 (Jobs, Executions, Tasks, Operations) and
Cloud Logging v2 ``entries:list``, on 127.0.0.1, for the official clients over REST.

It speaks the documented JSON shapes: requests as the clients send them (camelCase, enums as
numbers), answers with only fields the API defines (every answer is checked by parsing it
strictly into the clients' own message types: an unknown field is an error the stand-in
records in ``errors``), errors as ``{"error": {"code", "message", "status"}}``.

An execution "runs" for ``behaviour["seconds"]``, then its one task succeeds (exit code 0)
or fails (any other exit code), and its ``stdout`` / ``stderr`` are written as log entries,
one per line, in the logs ``run.googleapis.com/stdout`` / ``stderr`` with the labels Cloud Run
uses. Like Cloud Run, ``jobs:run`` answers with a long-running Operation whose metadata is the
new Execution, done only when the execution ends; a cancelled execution's task reports no
exit code. Faults: ``fail_with(403, "PERMISSION_DENIED", ...)`` (any status, for all or some
methods), ``hang_seconds`` (answers late), ``stop()`` (nobody listens), ``log_delay_seconds``
(entries reach Logging late).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.cloud import run_v2
from google.cloud.logging_v2.types import ListLogEntriesResponse
from google.longrunning import operations_pb2
from google.protobuf import json_format

JOB_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LOC = r"/v2/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
ROUTES = [
    ("GET", LOC + r"/jobs", "list_jobs"),
    ("POST", LOC + r"/jobs", "create_job"),
    ("GET", LOC + r"/jobs/(?P<job>[^/:]+)", "get_job"),
    ("PATCH", LOC + r"/jobs/(?P<job>[^/:]+)", "update_job"),
    ("POST", LOC + r"/jobs/(?P<job>[^/:]+):run", "run_job"),
    ("GET", LOC + r"/jobs/(?P<job>[^/:]+)/executions", "list_executions"),
    ("GET", LOC + r"/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+)", "get_execution"),
    (
        "DELETE",
        LOC + r"/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+)",
        "delete_execution",
    ),
    (
        "POST",
        LOC + r"/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+):cancel",
        "cancel_execution",
    ),
    (
        "GET",
        LOC + r"/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+)/tasks",
        "list_tasks",
    ),
    ("GET", LOC + r"/operations/(?P<operation>[^/:]+)", "get_operation"),
    ("POST", r"/v2/entries:list", "list_entries"),
]
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
STRICT = {
    "Job": run_v2.Job,
    "Execution": run_v2.Execution,
    "Task": run_v2.Task,
    "ListJobsResponse": run_v2.ListJobsResponse,
    "ListExecutionsResponse": run_v2.ListExecutionsResponse,
    "ListTasksResponse": run_v2.ListTasksResponse,
    "ListLogEntriesResponse": ListLogEntriesResponse,
}


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class CloudRunStandin:
    def __init__(self, **behaviour: Any):
        self.behaviour = {"seconds": 0.3, "exit_code": 0, "stdout": "", "stderr": ""}
        self.behaviour.update(behaviour)
        self.jobs: dict[str, dict] = {}
        self.executions: dict[str, dict] = {}  # name -> {"resource", "ends_at", ...}
        self.operations: dict[str, dict] = {}
        self.entries: list[dict] = []
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self.failures: list[tuple[set[str] | None, int, str, str]] = []
        self.hang_seconds = 0.0
        self.log_delay_seconds = 0.0
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None

    # -- running the server -------------------------------------------------------------

    def start(self, port: int = 0) -> CloudRunStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                standin._handle(self)

            do_POST = do_PATCH = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def restart(self) -> None:
        """Answer again, at the same address and with the same state, after ``stop``."""
        assert self.server is not None
        self.start(self.server.server_address[1])

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def fail_with(self, code: int, status: str, message: str, methods=None) -> None:
        """Answer ``methods`` (all Cloud Run and Logging methods if None) with this error."""
        self.failures.append((set(methods) if methods else None, code, status, message))

    def clear_failures(self) -> None:
        self.failures.clear()

    def calls(self, method: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method]

    # -- HTTP ---------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        if self.hang_seconds:
            time.sleep(self.hang_seconds)
        parts = urlsplit(request.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
            method, params = self._route(request.command, path)
            with self.lock:
                self.requests.append(
                    {"method": method, "path": path, "query": query, "body": body, **params}
                )
                for methods, code, status, message in self.failures:
                    if methods is None or method in methods:
                        raise ApiError(code, message, status)
                kind, answer = getattr(self, "_" + method)(body=body, query=query, **params)
            self._check(kind, answer)
            self._send(request, 200, answer)
        except ApiError as error:
            payload = {"code": error.code, "message": error.message, "status": error.status}
            self._send(request, error.code, {"error": payload})
        except Exception as error:  # noqa: BLE001 - a stand-in bug: say so loudly
            self.errors.append(f"{request.command} {path}: {type(error).__name__}: {error}")
            payload = {"code": 500, "message": str(error), "status": "INTERNAL"}
            self._send(request, 500, {"error": payload})

    def _route(self, verb: str, path: str) -> tuple[str, dict]:
        for route_verb, pattern, method in ROUTES:
            if verb == route_verb and (match := re.fullmatch(pattern, path)):
                return method, match.groupdict()
        raise ApiError(404, f"no such method: {verb} {path}")

    def _send(self, request, code: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        try:
            request.send_response(code)
            request.send_header("Content-Type", "application/json; charset=UTF-8")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (hang_seconds): as a real server, answer no one

    def _check(self, kind: str, answer: dict) -> None:
        """Parse the answer as strictly as the clients' operation polling does."""
        if kind == "Operation":
            json_format.ParseDict(answer, operations_pb2.Operation(), ignore_unknown_fields=False)
        else:
            json_format.ParseDict(answer, STRICT[kind].pb()(), ignore_unknown_fields=False)

    # -- jobs ---------------------------------------------------------------------------

    def _job(self, project, location, job) -> dict:
        name = f"projects/{project}/locations/{location}/jobs/{job}"
        if name not in self.jobs:
            raise ApiError(
                404,
                f"Resource '{job}' of kind 'JOB' in region '{location}' in "
                f"project '{project}' does not exist.",
            )
        return self.jobs[name]

    def _validate_job(self, body: dict) -> None:
        task = body.get("template", {}).get("template", {})
        containers = task.get("containers") or []
        if len(containers) != 1 or not containers[0].get("image"):
            raise ApiError(400, "spec.template.spec.containers: exactly one with an image")
        limits = containers[0].get("resources", {}).get("limits", {})
        if "nvidia.com/gpu" in limits and not task.get("nodeSelector", {}).get("accelerator"):
            raise ApiError(400, "a GPU limit needs nodeSelector.accelerator")
        if "memory" in limits and not re.fullmatch(r"\d+(Mi|Gi)", limits["memory"]):
            raise ApiError(400, f"invalid memory limit {limits['memory']!r}")

    def _list_jobs(self, body, query, project, location):
        prefix = f"projects/{project}/locations/{location}/jobs/"
        jobs = [job for name, job in sorted(self.jobs.items()) if name.startswith(prefix)]
        page, token = self._page(jobs, query)
        return "ListJobsResponse", {"jobs": page, **token}

    def _create_job(self, body, query, project, location):
        job_id = query.get("jobId", "")
        if not JOB_ID.match(job_id):
            raise ApiError(400, f"invalid job id {job_id!r}")
        name = f"projects/{project}/locations/{location}/jobs/{job_id}"
        if name in self.jobs:
            raise ApiError(409, f"Resource '{job_id}' already exists.")
        self._validate_job(body)
        now = stamp(datetime.now(UTC))
        job = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "generation": "1",
            "labels": body.get("labels", {}),
            "createTime": now,
            "updateTime": now,
            "creator": "standin@example.com",
            "launchStage": "GA",
            "template": body["template"],
            "observedGeneration": "1",
            "executionCount": 0,
            "reconciling": False,
            "etag": secrets.token_hex(8),
        }
        job["template"]["template"].setdefault("timeout", "600s")
        self.jobs[name] = job
        return "Operation", self._operation(project, location, job, "Job", done=True)

    def _get_job(self, body, query, project, location, job):
        return "Job", self._job(project, location, job)

    def _update_job(self, body, query, project, location, job):
        existing = self._job(project, location, job)
        self._validate_job(body)
        existing["labels"] = body.get("labels", {})
        existing["template"] = body["template"]
        existing["template"]["template"].setdefault("timeout", "600s")
        existing["generation"] = existing["observedGeneration"] = str(
            int(existing["generation"]) + 1
        )
        existing["updateTime"] = stamp(datetime.now(UTC))
        existing["etag"] = secrets.token_hex(8)
        return "Operation", self._operation(project, location, existing, "Job", done=True)

    # -- executions ---------------------------------------------------------------------

    def _run_job(self, body, query, project, location, job):
        definition = self._job(project, location, job)
        overrides = body.get("overrides", {})
        template = json.loads(json.dumps(definition["template"]["template"]))
        container = template["containers"][0]
        for override in overrides.get("containerOverrides", []):
            if override.get("name") not in (None, "", container.get("name")):
                raise ApiError(400, f"no container named {override.get('name')!r}")
            if override.get("clearArgs"):
                container["args"] = []
            if override.get("args"):
                container["args"] = override["args"]
            if override.get("env"):
                env = {e["name"]: e for e in container.get("env", [])}
                env.update({e["name"]: e for e in override["env"]})
                container["env"] = list(env.values())
        if "timeout" in overrides:
            template["timeout"] = overrides["timeout"]
        task_count = overrides.get("taskCount") or definition["template"].get("taskCount", 1)
        short = f"{job}-{secrets.token_hex(3)[:5]}"
        name = f"{definition['name']}/executions/{short}"
        now = datetime.now(UTC)
        resource = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "creator": "standin@example.com",
            "generation": "1",
            "labels": dict(definition["template"].get("labels", {})),
            "createTime": stamp(now),
            "startTime": stamp(now),
            "updateTime": stamp(now),
            "launchStage": "GA",
            "job": job,
            "parallelism": 1,
            "taskCount": task_count,
            "template": template,
            "reconciling": True,
            "conditions": [
                {
                    "type": "Completed",
                    "state": "CONDITION_PENDING",
                    "lastTransitionTime": stamp(now),
                },
            ],
            "observedGeneration": "1",
            "runningCount": 1,
            "logUri": f"https://console.cloud.google.com/logs/viewer?project={project}",
            "etag": secrets.token_hex(8),
        }
        self.executions[name] = {
            "resource": resource,
            "ends_at": time.monotonic() + float(self.behaviour["seconds"]),
            "behaviour": dict(self.behaviour),
            "project": project,
            "location": location,
            "task": None,
        }
        definition["executionCount"] = definition.get("executionCount", 0) + 1
        definition["latestCreatedExecution"] = {"name": name, "createTime": stamp(now)}
        operation = self._operation(project, location, resource, "Execution", done=False)
        self.operations[operation["name"].rsplit("/", 1)[-1]] = {"execution": name}
        return "Operation", operation

    def _execution(self, project, location, job, execution) -> dict:
        name = f"projects/{project}/locations/{location}/jobs/{job}/executions/{execution}"
        record = self.executions.get(name)
        if record is None:
            raise ApiError(404, f"Resource '{execution}' of kind 'EXECUTION' does not exist.")
        self._advance(record)
        return record

    def _advance(self, record: dict) -> None:
        """Finish an execution whose time has come: its task, its counts, its logs."""
        resource = record["resource"]
        if "completionTime" in resource or time.monotonic() < record["ends_at"]:
            return
        exit_code = int(record["behaviour"]["exit_code"])
        self._finish(record, "succeeded" if exit_code == 0 else "failed", exit_code)
        self._write_logs(record)

    def _finish(self, record: dict, how: str, exit_code: int | None) -> None:
        resource = record["resource"]
        now = datetime.now(UTC)
        resource["completionTime"] = resource["updateTime"] = stamp(now)
        resource["runningCount"] = 0
        resource["reconciling"] = False
        resource[f"{how}Count"] = 1
        condition = {"type": "Completed", "lastTransitionTime": stamp(now)}
        if how == "succeeded":
            condition.update(state="CONDITION_SUCCEEDED", message="Execution completed.")
        elif how == "failed":
            condition.update(
                state="CONDITION_FAILED",
                message="Task failed with a non-zero exit code.",
                executionReason="NON_ZERO_EXIT_CODE",
            )
        else:
            condition.update(
                state="CONDITION_FAILED",
                message="The execution was cancelled.",
                executionReason="CANCELLED",
            )
        resource["conditions"] = [condition]
        task = self._task_resource(record, now)
        if exit_code is not None:
            result: dict[str, Any] = {"exitCode": exit_code}
            if exit_code:
                result["status"] = {
                    "code": 2,
                    "message": f"Application failed with exit code {exit_code}",
                }
            else:
                result["status"] = {}
            task["lastAttemptResult"] = result
        record["task"] = task

    def _task_resource(self, record: dict, now: datetime) -> dict:
        resource = record["resource"]
        short = resource["name"].rsplit("/", 1)[-1]
        template = resource["template"]
        return {
            "name": f"{resource['name']}/tasks/{short}-task0",
            "uid": str(uuid.uuid4()),
            "generation": "1",
            "labels": resource.get("labels", {}),
            "createTime": resource["createTime"],
            "startTime": resource["startTime"],
            "completionTime": stamp(now),
            "updateTime": stamp(now),
            "job": resource["job"],
            "execution": short,
            "containers": template["containers"],
            "maxRetries": template.get("maxRetries", 3),
            "timeout": template.get("timeout", "600s"),
            "index": 0,
            "retried": 0,
            "observedGeneration": "1",
            "etag": secrets.token_hex(8),
        }

    def _write_logs(self, record: dict) -> None:
        resource = record["resource"]
        project, location = record["project"], record["location"]
        short = resource["name"].rsplit("/", 1)[-1]
        moment = parse_stamp(resource["startTime"])
        visible_at = time.monotonic() + self.log_delay_seconds
        for stream in ("stdout", "stderr"):
            text = record["behaviour"][stream]
            for line in text.splitlines():
                moment += timedelta(microseconds=10)
                self.entries.append(
                    {
                        "entry": {
                            "insertId": secrets.token_hex(6),
                            "logName": f"projects/{project}/logs/run.googleapis.com%2F{stream}",
                            "resource": {
                                "type": "cloud_run_job",
                                "labels": {
                                    "project_id": project,
                                    "job_name": resource["job"],
                                    "location": location,
                                },
                            },
                            "textPayload": line,
                            "timestamp": stamp(moment),
                            "receiveTimestamp": stamp(datetime.now(UTC)),
                            "severity": "ERROR" if stream == "stderr" else "DEFAULT",
                            "labels": {
                                "run.googleapis.com/execution_name": short,
                                "run.googleapis.com/task_index": "0",
                                "run.googleapis.com/task_attempt": "0",
                                "instanceId": "standin-instance",
                            },
                        },
                        "visible_at": visible_at,
                    }
                )

    def _get_execution(self, body, query, project, location, job, execution):
        return "Execution", self._execution(project, location, job, execution)["resource"]

    def _list_executions(self, body, query, project, location, job):
        if job == "-":
            prefix = f"projects/{project}/locations/{location}/jobs/"
        else:
            self._job(project, location, job)
            prefix = f"projects/{project}/locations/{location}/jobs/{job}/executions/"
        found = []
        for name, record in sorted(self.executions.items()):
            if name.startswith(prefix):
                self._advance(record)
                found.append(record["resource"])
        page, token = self._page(found, query)
        return "ListExecutionsResponse", {"executions": page, **token}

    def _cancel_execution(self, body, query, project, location, job, execution):
        record = self._execution(project, location, job, execution)
        if "completionTime" in record["resource"]:
            raise ApiError(400, "Execution has already completed.", "FAILED_PRECONDITION")
        self._finish(record, "cancelled", None)
        return "Operation", self._operation(
            project, location, record["resource"], "Execution", done=True
        )

    def _delete_execution(self, body, query, project, location, job, execution):
        record = self._execution(project, location, job, execution)
        if "completionTime" not in record["resource"]:
            self._finish(record, "cancelled", None)
        del self.executions[record["resource"]["name"]]
        return "Operation", self._operation(
            project, location, record["resource"], "Execution", done=True
        )

    def _list_tasks(self, body, query, project, location, job, execution):
        record = self._execution(project, location, job, execution)
        task = record["task"] or {
            **self._task_resource(record, datetime.now(UTC)),
        }
        if record["task"] is None:
            task.pop("completionTime")
        return "ListTasksResponse", {"tasks": [task]}

    # -- operations ---------------------------------------------------------------------

    def _operation(self, project, location, resource, kind, done) -> dict:
        message_type = f"type.googleapis.com/google.cloud.run.v2.{kind}"
        operation = {
            "name": f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}",
            "metadata": {"@type": message_type, **resource},
            "done": done,
        }
        if done:
            operation["response"] = {"@type": message_type, **resource}
        return operation

    def _get_operation(self, body, query, project, location, operation):
        known = self.operations.get(operation)
        if known is None:
            raise ApiError(404, f"operation {operation} not found")
        record = self.executions.get(known["execution"])
        if record is None:
            raise ApiError(404, "the execution of this operation was deleted")
        self._advance(record)
        done = "completionTime" in record["resource"]
        answer = self._operation(project, location, record["resource"], "Execution", done)
        answer["name"] = f"projects/{project}/locations/{location}/operations/{operation}"
        return "Operation", answer

    # -- Cloud Logging --------------------------------------------------------------------

    def _list_entries(self, body, query):
        for record in list(self.executions.values()):
            self._advance(record)
        matches = _compile_filter(body.get("filter", ""))
        now = time.monotonic()
        found = [e["entry"] for e in self.entries if e["visible_at"] <= now and matches(e["entry"])]
        order = body.get("orderBy", "timestamp asc")
        if order not in ("timestamp asc", "timestamp desc"):
            raise ApiError(400, f"invalid orderBy {order!r}")
        found.sort(key=lambda e: e["timestamp"], reverse=order == "timestamp desc")
        page, token = self._page(found, body)
        return "ListLogEntriesResponse", {"entries": page, **token}

    # -- paging -------------------------------------------------------------------------

    def _page(self, items: list, params: dict) -> tuple[list, dict]:
        size = int(params.get("pageSize") or 100)
        start = int(params.get("pageToken") or 0)
        page = items[start : start + size]
        token = {"nextPageToken": str(start + size)} if start + size < len(items) else {}
        return page, token


# -- Logging filters: the subset the executor sends ----------------------------------------

_TERM = re.compile(r'^(?P<field>[\w.]+(?:\."[^"]+")?)\s*(?P<op>>=|<=|=|>|<)\s*"(?P<value>[^"]*)"$')


def _split(text: str, word: str) -> list[str]:
    """Split on `` word `` outside quotes and parentheses."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    token = f" {word} "
    while i < len(text):
        char = text[i]
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(token, i):
            parts.append(text[start:i])
            i += len(token)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _compile_filter(text: str):
    if not text.strip():
        return lambda entry: True
    clauses = []
    for part in _split(text.strip(), "AND"):
        if part.startswith("(") and part.endswith(")"):
            alternatives = [_term(t) for t in _split(part[1:-1], "OR")]
            clauses.append(lambda e, alts=alternatives: any(a(e) for a in alts))
        else:
            clauses.append(_term(part))
    return lambda entry: all(clause(entry) for clause in clauses)


def _term(text: str):
    match = _TERM.match(text.strip())
    if not match:
        raise ApiError(400, f"Unparseable filter: {text!r}")
    path = [a or b for a, b in re.findall(r'"([^"]+)"|([^.]+)', match["field"])]
    op, value = match["op"], match["value"]

    def test(entry):
        current: Any = entry
        for key in path:
            key = {"type": "type"}.get(key, key)
            current = current.get(key) if isinstance(current, dict) else None
        if current is None:
            return False
        left, right = current, value
        if path == ["timestamp"]:
            left, right = parse_stamp(current), parse_stamp(value)
        return {
            "=": left == right,
            ">=": left >= right,
            "<=": left <= right,
            ">": left > right,
            "<": left < right,
        }[op]

    return test
