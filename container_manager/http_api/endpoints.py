"""The endpoints: each parses the request, checks the caller's permission, asks
``container_manager.api`` and answers with ``serializers.job_to_dict``."""

from datetime import datetime

from django.core.exceptions import ValidationError
from django.http import Http404, StreamingHttpResponse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import ConfigDict

from .. import api as jobs_api
from ..models import ContainerJob, ExecutorHost, JobArray, as_job_id
from ..permissions import ADD, CANCEL, RETRY, REVEAL, VIEW, Needed, refusal
from ..serializers import job_to_dict
from ..states import JobStatus
from .auth import AUTHENTICATION

api = NinjaAPI(
    title="Container jobs",
    description="Create, list, show, follow, cancel and retry container jobs.",
    auth=AUTHENTICATION,
    urls_namespace="container_manager_api",
)


class JobIn(Schema):
    """``create_job``'s arguments: only ``image`` is required; the rest default as there."""

    model_config = ConfigDict(extra="forbid")

    image: str
    command: list[str] | None = None
    host: str | None = None
    env: dict[str, str] | None = None
    env_template: str | None = None
    secrets: dict[str, str] | None = None
    hold: bool = False
    depends_on: list[str] | None = None
    name: str | None = None
    working_dir: str | None = None
    memory_limit: int | None = None
    cpu_limit: float | None = None
    gpus: int | None = None
    timeout_seconds: int | None = None
    priority: int | None = None
    scheduled_for: datetime | None = None
    max_attempts: int | None = None
    retry_on: list[str] | None = None
    executor_type: str | None = None
    host_labels: dict[str, str] | None = None
    run_as_user: str | None = None
    read_only_root: bool | None = None
    privileged: bool | None = None
    host_network: bool | None = None
    host_pid: bool | None = None
    capabilities: list[str] | None = None
    mounts: list[dict] | None = None
    webhook_url: str | None = None


class JobFilters(Schema):
    status: JobStatus | None = None
    host: str | None = None
    array: str | None = None


class JobPage:
    """Jobs as the pagination sees them: counted in the database, and only the page asked
    for fetched and turned into JSON."""

    def __init__(self, jobs):
        self.jobs = jobs

    def __len__(self) -> int:
        return self.jobs.count()

    def __getitem__(self, page: slice) -> list[dict]:
        return [job_to_dict(job) for job in self.jobs[page]]


def require(request, needed: Needed) -> None:
    if problem := refusal(request.user, needed):
        raise HttpError(403, problem)


def get_job(request, job_id: str) -> ContainerJob:
    """The job ``job_id`` (a job id or an attempt's execution id) names, for a viewer."""
    require(request, VIEW)
    found = list(ContainerJob.objects.identified_by(job_id)[:2])
    if len(found) != 1:
        raise Http404(f"no job with id or execution id {job_id!r}")
    return found[0]


@api.exception_handler(ValidationError)
def invalid(request, error: ValidationError):
    """422 naming each bad field, as for a body that does not parse; 409 when the job's
    status refuses it (already ended, changed meanwhile)."""
    problems = error.message_dict if hasattr(error, "error_dict") else {"": error.messages}
    detail = [
        {"loc": ["body", field] if field else ["body"], "msg": message, "type": "invalid"}
        for field, messages in problems.items()
        for message in messages
    ]
    status = 409 if set(problems) == {"status"} else 422
    return api.create_response(request, {"detail": detail}, status=status)


@api.post("/jobs", response={201: dict}, summary="Create a job", tags=["jobs"])
def create_job(request, payload: JobIn):
    require(request, ADD)
    arguments = payload.model_dump(exclude_unset=True)
    job = jobs_api.create_job(created_by=request.user, **arguments)
    return Status(201, job_to_dict(job))


@api.get("/jobs", response=list[dict], summary="List jobs, newest first", tags=["jobs"])
@paginate(LimitOffsetPagination)
def list_jobs(request, filters: Query[JobFilters]):
    require(request, VIEW)
    jobs = ContainerJob.objects.select_related(
        "host", "requested_host", "environment_template", "created_by"
    ).prefetch_related("attempt_set__host", "depends_on", "webhook_deliveries")
    if filters.status:
        jobs = jobs.filter(status=filters.status)
    if filters.host:
        jobs = jobs.filter(host__in=ExecutorHost.objects.filter(name=filters.host))
    if filters.array:
        pk = as_job_id(filters.array)
        array = JobArray.objects.filter(pk=pk).first() if pk else None
        if array is None:
            raise Http404(f"no job array with id {filters.array!r}")
        jobs = jobs.filter(array=array).order_by("array_index")
    return JobPage(jobs)


@api.get("/jobs/{job_id}", response=dict, summary="A job and its attempts", tags=["jobs"])
def show_job(request, job_id: str, reveal_secrets: bool = False):
    job = get_job(request, job_id)
    if reveal_secrets:
        require(request, REVEAL)
    return job_to_dict(job, reveal_secrets=reveal_secrets)


@api.get(
    "/jobs/{job_id}/logs",
    summary="A job's output: stored, or (follow=1) streamed until it ends",
    tags=["jobs"],
    openapi_extra={"responses": {200: {"content": {"text/plain": {}}}}},
)
def job_logs(request, job_id: str, follow: bool = False):
    job = get_job(request, job_id)
    text = jobs_api.follow_output(job) if follow else jobs_api.stored_output(job)
    return StreamingHttpResponse(text, content_type="text/plain; charset=utf-8")


@api.post("/jobs/{job_id}/cancel", response=dict, summary="Cancel a job", tags=["jobs"])
def cancel_job(request, job_id: str):
    job = get_job(request, job_id)
    require(request, CANCEL)
    return job_to_dict(jobs_api.cancel_job(job))


@api.post("/jobs/{job_id}/retry", response=dict, summary="Queue an ended job again", tags=["jobs"])
def retry_job(request, job_id: str):
    job = get_job(request, job_id)
    require(request, RETRY)
    return job_to_dict(jobs_api.retry_job(job))
