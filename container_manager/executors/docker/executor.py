"""The Docker executor: a job's attempt as one container, from launch to removal.

The execution id is the container's full id. Every container carries labels linking it to its
job (``container_manager.job_id``, ``.attempt``, ``.host``, ``.managed="true"``), so what a
worker started can always be found again with ``docker ps --filter label=...``, and is named
``cm-<job id>-<attempt>``, which makes launching idempotent per attempt.

Status: a container that was created but never started (a worker died between the two calls)
counts as ended, since nothing will ever start it; its harvest reports that it never ran.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import docker
import docker.errors
from django.core.exceptions import ValidationError
from docker.models.containers import _create_container_args

from ... import logs
from ...exceptions import ExecutorError, HostError, LaunchError
from ...output import CappedOutput, LastLine
from ...spec import ATTEMPT_LABEL, HOST_LABEL, JOB_ID_LABEL, MANAGED_LABEL
from ..base import EXITED, NOT_FOUND, RUNNING, BaseExecutor, Health, Outcome
from .connection import ENGINE_ERRORS, connect, host_problems, unavailable, where
from .logs import read_output
from .options import (
    DEFAULT_PULL_POLICY,
    DEFAULT_TIMEOUT,
    MIB,
    container_options,
    validate_config,
)
from .usage import UsageSampler

logger = logs.get_logger(__name__)

# A container killed by SIGKILL (the OOM killer's signal) exits with 128 + 9.
SIGKILL_EXIT_CODE = 137
# Container states that still have (or will have again) running processes.
LIVE_STATES = {"running", "restarting", "paused"}
# Usage is sampled only for executions still running after this long: the engine's first
# stats frame comes about a second in, so a stream opened for a shorter one reports nothing
# and costs the engine a request at its busiest moment, the container's start.
SAMPLE_AFTER_SECONDS = 0.5
# How many of the log's last entries are read for the line a follow stream left out: each
# stream's last entry is among them unless the other stream printed this many lines after it.
LAST_ENTRIES = 16


class DockerExecutor(BaseExecutor):
    type_name = "docker"

    def __init__(self, host):
        super().__init__(host)
        self._client = None
        self._client_lock = threading.Lock()
        self._samplers: dict[str, UsageSampler] = {}
        self._exit_codes: dict[str, int] = {}
        # Executions this executor stopped itself: a SIGKILL there is ours, not the kernel's.
        self._stopped: set[str] = set()
        self._state_lock = threading.Lock()

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def validate_config(cls, config):
        validate_config(config)

    @classmethod
    def validate_host(cls, host):
        if errors := host_problems(host):
            raise ValidationError(errors)

    @property
    def api_timeout(self) -> float:
        return self.config.get("timeout", DEFAULT_TIMEOUT)

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, created (and the engine first contacted) on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def _connect(self):
        self.check_usable_config("Docker")
        return connect(self.host, self.api_timeout)

    def _error(self, error: Exception, doing: str, cls=ExecutorError) -> ExecutorError:
        """Translate an SDK or transport error into an ExecutorError worth reading alone."""
        if isinstance(error, docker.errors.APIError):
            explanation = error.explanation or str(error)
            if isinstance(explanation, bytes):
                explanation = explanation.decode("utf-8", "replace")
            return cls(f"{doing} failed on Docker host '{self.host.name}': {explanation}")
        return unavailable(self.host, error, doing, self.api_timeout)

    # -- launching --------------------------------------------------------------------

    @property
    def pull_policy(self) -> str:
        return self.config.get("pull_policy", DEFAULT_PULL_POLICY)

    def launch(self, spec):
        options = container_options(spec, self.config)
        if self.pull_policy == "always":
            self._pull(spec.image, spec.registry_auth)
        try:
            container_id = self._create(spec, options)
        except docker.errors.APIError as error:
            if error.status_code != 409:
                raise self._launch_error(error, spec) from error
            # This attempt has a container already: an earlier launch's answer was lost.
            if existing := self.find_execution(spec.job_id, spec.attempt):
                logger.info("job %s: attempt %s runs already", spec.job_id, spec.attempt)
                return existing
            try:  # find_execution removed an unstarted one
                container_id = self._create(spec, options)
            except ENGINE_ERRORS as again:
                raise self._launch_error(again, spec) from again
        except ENGINE_ERRORS as error:
            raise self._launch_error(error, spec) from error
        try:
            self.api.start(container_id)
        except ENGINE_ERRORS as error:
            translated = self._error(
                error, f"starting the container for '{spec.image}'", LaunchError
            )
            if spec.gpus and "device driver" in str(error):
                translated = LaunchError(
                    f"Docker host '{self.host.name}' cannot provide the {spec.gpus} GPU(s) the "
                    f"job asks for: {translated}"
                )
            try:
                self.api.remove_container(container_id, force=True)
            except Exception as remove_error:  # noqa: BLE001 - report the start failure
                logger.warning(
                    "could not remove unstarted container %s: %s", container_id, remove_error
                )
                # The engine went away mid-start: the container may be running there.
                if isinstance(translated, HostError):
                    translated.maybe_started = True
            raise translated from error
        return container_id

    def _create(self, spec, options) -> str:
        """The id of the attempt's new container. A missing image is pulled then, as
        ``docker run`` does: one request when the image is there, the usual case."""
        try:
            return self._create_container(spec.image, options)
        except docker.errors.ImageNotFound:
            if self.pull_policy == "never":
                raise LaunchError(
                    f"image '{spec.image}' is not present on host '{self.host.name}' "
                    "and pull_policy is 'never'"
                ) from None
        self._pull(spec.image, spec.registry_auth)
        return self._create_container(spec.image, options)

    def _create_container(self, image, options) -> str:
        # The SDK's own arguments mapping, without ``containers.create``'s inspection of the
        # new container, a round trip per launch whose answer nothing here reads.
        api = self.api
        arguments = _create_container_args({"image": image, "version": api._version, **options})
        return api.create_container(**arguments)["Id"]

    def _launch_error(self, error, spec):
        if isinstance(error, docker.errors.ImageNotFound):
            return LaunchError(
                f"image '{spec.image}' is not present on Docker host '{self.host.name}' "
                f"({error.explanation})"
            )
        return self._error(error, f"creating a container from '{spec.image}'", LaunchError)

    def find_execution(self, job_id, attempt):
        """The container started for this attempt of the job, found by its labels.

        One that was created but never started is removed instead: the job can then be
        queued again as if nothing had happened.
        """
        filters = {"label": [f"{JOB_ID_LABEL}={job_id}", f"{ATTEMPT_LABEL}={attempt}"]}
        try:
            found = self.api.containers(all=True, filters=filters)
            for container in found:
                if container["State"] == "created":
                    self.api.remove_container(container["Id"], force=True)
        except ENGINE_ERRORS as error:
            raise self._error(error, f"looking up the container of job {job_id}") from error
        started = [c["Id"] for c in found if c["State"] != "created"]
        return started[0] if started else None

    def list_executions(self):
        filters = {"label": [f"{MANAGED_LABEL}=true", f"{HOST_LABEL}={self.host.name}"]}
        try:
            found = self.api.containers(all=True, filters=filters)
        except ENGINE_ERRORS as error:
            raise self._error(error, "listing containers") from error
        return {c["Id"]: c["Labels"].get(JOB_ID_LABEL, "") for c in found}

    def _pull(self, image, auth=None):
        policy = self.pull_policy
        # The registry's credentials, the engine's way: sent with this pull only.
        login = {"username": auth.username, "password": auth.password} if auth else None
        try:
            self.client.images.pull(image, auth_config=login)
        except docker.errors.APIError as error:
            reason = error.explanation or str(error)
            if auth and "unauthorized" in str(reason).lower():
                reason = f"{reason} (registry {auth.registry} refused the login of {auth.username})"
            if policy == "always":
                message = (
                    f"pulling image '{image}' on host '{self.host.name}' failed "
                    f"(pull_policy is 'always'): {reason}"
                )
            else:
                message = (
                    f"image '{image}' is not present on host '{self.host.name}' "
                    f"and pulling it failed: {reason}"
                )
            raise LaunchError(message) from error
        except ENGINE_ERRORS as error:
            raise self._error(error, f"pulling image '{image}'", LaunchError) from error

    def _start_sampler(self, container_id):
        with self._state_lock:
            if container_id in self._samplers:
                return
            self._samplers[container_id] = UsageSampler(self.api, container_id)
            sampler = self._samplers[container_id]
        try:
            sampler.start()
        except RuntimeError as error:  # cannot start a thread (interpreter shutting down...)
            logger.warning("no usage sampling for container %s: %s", container_id[:12], error)

    # -- following an execution -------------------------------------------------------

    def _inspect(self, execution_id, doing):
        """The container's attributes, or None if it does not exist."""
        try:
            return self.api.inspect_container(execution_id)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as error:
            raise self._error(error, doing) from error

    def status(self, execution_id):
        attrs = self._inspect(execution_id, f"inspecting container {execution_id[:12]}")
        if attrs is None:
            return NOT_FOUND
        return RUNNING if attrs["State"]["Status"] in LIVE_STATES else EXITED

    def wait(self, execution_id, timeout):
        if timeout is not None and timeout <= 0:
            return self.status(execution_id) != RUNNING
        with self._state_lock:
            sampled = execution_id in self._samplers
        if not sampled:
            first = SAMPLE_AFTER_SECONDS if timeout is None else min(timeout, SAMPLE_AFTER_SECONDS)
            if self._wait(execution_id, first):
                return True
            self._start_sampler(execution_id)
            if timeout is not None:
                timeout -= first
                if timeout <= 0:
                    return False
        return self._wait(execution_id, timeout)

    def _wait(self, execution_id, timeout):
        request_timeout = None if timeout is None or math.isinf(timeout) else timeout
        try:
            result = self.api.wait(execution_id, timeout=request_timeout)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as error:
            raise self._error(error, f"waiting for container {execution_id[:12]}") from error
        except ENGINE_ERRORS:
            # A still-running container makes the wait request time out (as a ConnectionError
            # on a unix socket). Asking again tells that apart from an engine that went away:
            # status() raises ExecutorUnavailable then.
            return self.status(execution_id) != RUNNING
        if isinstance(result, dict) and isinstance(result.get("StatusCode"), int):
            with self._state_lock:
                self._exit_codes[execution_id] = result["StatusCode"]
        return True

    def harvest(self, execution_id, deadline=None):
        attrs = self._inspect(execution_id, f"inspecting container {execution_id[:12]}")
        with self._state_lock:
            sampler = self._samplers.get(execution_id)
            seen_exit_code = self._exit_codes.get(execution_id)
        peak_memory_bytes = sampler.peak_memory_bytes if sampler else None
        cpu_seconds = sampler.cpu_seconds if sampler else None
        auto_removed = self.config.get("auto_remove", False)
        gone = ExecutorError(f"container {execution_id} no longer exists on host {self.host.name}")
        if attrs is None:
            if auto_removed and seen_exit_code is not None:
                # The engine removed it after this executor saw it exit; its output went too.
                return Outcome(
                    exit_code=seen_exit_code,
                    peak_memory_bytes=peak_memory_bytes,
                    cpu_seconds=cpu_seconds,
                )
            raise gone
        state = attrs["State"]
        if state["Status"] in LIVE_STATES:
            raise ExecutorError(
                f"container {execution_id[:12]} on host {self.host.name} is still "
                f"{state['Status']}; it can only be harvested once it has ended"
            )
        errors = []
        if state["Status"] == "created":
            errors.append(f"container {execution_id[:12]} was created but never started")
            exit_code = None
        else:
            exit_code = state.get("ExitCode")
        # The engine flags any OOM kill in the container, not only of its main process.
        oom_killed = bool(state.get("OOMKilled"))

        if oom_killed:
            limit = (attrs.get("HostConfig") or {}).get("Memory") or 0
            limit_text = f"limit {limit // MIB} MB" if limit else "no limit was set"
            if exit_code == 0:
                errors.append(
                    f"a process in the container was killed for running out of memory "
                    f"({limit_text}); the container went on and exited with code 0"
                )
            else:
                errors.append(f"container was killed for running out of memory ({limit_text})")
        elif (
            exit_code == SIGKILL_EXIT_CODE
            and attrs["HostConfig"].get("Memory")
            and execution_id not in self._stopped
        ):
            # Several containers OOM-killed at once, the engine sometimes misses the event
            # and leaves OOMKilled false: say what is most likely, without claiming it.
            limit = attrs["HostConfig"]["Memory"] // MIB
            errors.append(
                f"container was killed (SIGKILL, exit code 137) with a memory limit of "
                f"{limit} MB: most likely it ran out of memory"
            )
        if state.get("Error"):
            errors.append(f"Docker reported: {state['Error']}")
        try:
            stdout, stderr = read_output(
                self.api, execution_id, tty=attrs["Config"].get("Tty"), deadline=deadline
            )
        except docker.errors.NotFound:
            if not auto_removed:
                raise gone from None
            stdout = stderr = CappedOutput()
        except docker.errors.APIError as error:
            # 409 "dead or marked for removal": auto_remove is removing it right now.
            if not (auto_removed and error.status_code == 409):
                raise self._error(error, f"reading the output of {execution_id[:12]}") from error
            stdout = stderr = CappedOutput()
        except ENGINE_ERRORS as error:
            raise self._error(error, f"reading the output of {execution_id[:12]}") from error
        return Outcome(
            exit_code=exit_code,
            stdout=stdout.text(),
            stderr=stderr.text(),
            oom_killed=oom_killed,
            error="; ".join(errors),
            peak_memory_bytes=peak_memory_bytes,
            cpu_seconds=cpu_seconds,
        )

    def stream_logs(self, execution_id, follow=False):
        doing = f"reading the logs of container {execution_id[:12]}"
        try:
            stream = self.api.logs(
                execution_id, stdout=True, stderr=True, stream=True, follow=follow
            )
        except docker.errors.NotFound as error:
            raise ExecutorError(
                f"container {execution_id} no longer exists on host {self.host.name}"
            ) from error
        except ENGINE_ERRORS as error:
            raise self._error(error, doing) from error
        last_line = LastLine(b"\n")
        try:
            for chunk in stream:
                yield last_line.feed(chunk)
        except ENGINE_ERRORS as error:  # the engine went away mid-stream
            raise self._error(error, doing) from error
        finally:
            stream.close()
        if follow:  # unseen: the follow stream sometimes has them after all
            yield from last_line.unseen(self._unfinished_last_lines(execution_id))

    def _unfinished_last_lines(self, execution_id: str) -> Iterator[bytes]:
        """The engine's follow stream often leaves out a last line with no newline (seen on
        Docker 20.10, json-file and local drivers alike), which a plain read of the log has. Each
        stream's last entry among the log's last few is asked for (the engine counts its
        ``tail`` across both streams), and given when it has no newline: lines ending in one
        were followed. Nothing when the container has been removed meanwhile (its output is
        in the job's record)."""
        for stream in ("stdout", "stderr"):
            try:
                entries = list(
                    self.api.logs(
                        execution_id,
                        stdout=stream == "stdout",
                        stderr=stream == "stderr",
                        stream=True,
                        tail=LAST_ENTRIES,
                    )
                )
            except ENGINE_ERRORS:
                return
            if entries and not entries[-1].endswith(b"\n"):
                yield entries[-1]

    # -- ending -----------------------------------------------------------------------

    def stop(self, execution_id, grace_seconds):
        # The engine takes whole seconds: SIGTERM, then SIGKILL after the grace period.
        grace = max(0, math.ceil(grace_seconds))
        self._stopped.add(execution_id)
        try:
            self.api.stop(execution_id, timeout=grace)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as error:
            raise self._error(error, f"stopping container {execution_id[:12]}") from error

    def cleanup(self, execution_id):
        with self._state_lock:
            sampler = self._samplers.pop(execution_id, None)
            self._exit_codes.pop(execution_id, None)
            self._stopped.discard(execution_id)
        if sampler is not None:
            sampler.stop()
        try:
            self.api.remove_container(execution_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            if error.status_code == 409 and "in progress" in str(error.explanation):
                return  # auto_remove got there first
            raise self._error(error, f"removing container {execution_id[:12]}") from error
        except ENGINE_ERRORS as error:
            raise self._error(error, f"removing container {execution_id[:12]}") from error

    # -- health -----------------------------------------------------------------------

    def health_check(self):
        try:
            api = self.api
            api.ping()
            version = api.version()
            info = api.info()
        except ExecutorError as error:
            return Health(False, str(error))
        except ENGINE_ERRORS as error:
            return Health(False, str(self._error(error, "checking health")))
        running = info.get("ContainersRunning", 0)
        return Health(
            True,
            f"Docker {version.get('Version', '?')} on {where(self.host)}, "
            f"{running} container{'' if running == 1 else 's'} running",
        )
