"""Many jobs at once: create them from one spec and a file of parameters (or as a job array),
or cancel, retry, release, reroute, duplicate or delete a selection of them.

The work on each job is ``container_manager.api``'s, so a job is validated, refused or moved
exactly as one at a time would be. This module reads the parameters, walks the jobs in bounded
batches, and collects what was done and, for each job or row refused, why. The CLI
(``manage_container_job bulk``) and the admin's actions are thin layers over it.
"""

import csv
import io
import json
import shlex
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import PurePath
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import api, envfile, signals
from . import secrets as sealing
from .exceptions import SecretError
from .fields import short_repr
from .models import ContainerJob, ExecutorHost, JobArray, as_job_id
from .serializers import validation_error_lines
from .states import FAILURES, RETRYABLE, TERMINAL, InvalidTransition, JobStatus, check_transition

# Rows per INSERT (SQLite's limit on query parameters may split one further) / jobs per batch
# of updates: bounded memory and statement size, few round trips.
BATCH_SIZE = 500


@dataclass
class Failure:
    """One job or parameter row that was refused, and why."""

    item: str  # a job's id; for creation, where the row came from: "line 4", "item 2", "spec"
    reason: str  # naming the field where there is one: "argv: must be a list of strings"


@dataclass
class BulkResult:
    succeeded: list = field(default_factory=list)  # the jobs done (created, for create_jobs)
    failed: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __bool__(self) -> bool:
        return self.ok

    @property
    def total(self) -> int:
        """Every job or row looked at: each is either done or refused."""
        return len(self.succeeded) + len(self.failed)

    @property
    def still_running(self) -> int:
        """Jobs done that a worker still runs: a cancel of them is a request it acts on."""
        return sum(1 for job in self.succeeded if job.is_active)

    def to_dict(self) -> dict:
        return {
            "succeeded": [str(job.pk) for job in self.succeeded],
            "failed": [{"item": f.item, "reason": f.reason} for f in self.failed],
            "counts": {"succeeded": len(self.succeeded), "failed": len(self.failed)},
        }


def _reason(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(validation_error_lines(error))
    return str(error)


# -- parameters ----------------------------------------------------------------------------


@dataclass
class ParamRow:
    """One job's parameters, and where in the input they came from."""

    where: str  # "line 3" (CSV, JSON Lines: the file's line) or "item 2" (JSON array, from 1)
    argv: list[str] | None = None  # replaces the spec's command when given
    env: dict[str, str] = field(default_factory=dict)  # merged over the spec's env
    name: str | None = None  # replaces the spec's name when given


PARAM_KEYS = ("argv", "env", "name")
FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def guess_format(filename: str) -> str:
    """The parameters' format from the file's name: json, jsonl (.jsonl, .ndjson) or csv."""
    found = FORMATS.get(PurePath(filename).suffix.lower())
    if found is None:
        raise ValidationError(
            f"cannot tell the format of {filename!r} from its name (.json, .jsonl, .ndjson, "
            ".csv); give it: json, jsonl or csv"
        )
    return found


def read_params(text: str, format: str) -> list[ParamRow]:
    """The rows of ``text`` in ``format`` (json, jsonl or csv; see the CLI's help).

    Raises ValidationError with one message per problem, each naming its row ("line 4: env:
    must be an object of strings"): every bad row, and no rows at all when one is bad.
    """
    items: Iterable[tuple[str, object]]
    to_row: Callable[[str, Any], ParamRow]
    if format == "json":
        items, to_row = _json_items(text), _object_row
    elif format == "jsonl":
        items, to_row = _jsonl_items(text), _json_line_row
    elif format == "csv":
        header, items = _csv_records(text)
        to_row = _csv_row_maker(header)
    else:
        raise ValidationError(f"unknown format {format!r}: use json, jsonl or csv")
    rows, problems = [], []
    for where, item in items:
        try:
            rows.append(to_row(where, item))
        except ValidationError as error:
            problems += [f"{where}: {message}" for message in error.messages]
    if problems:
        raise ValidationError(problems)
    return rows


def _loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationError(f"not JSON: {error}") from None
    except RecursionError:
        raise ValidationError("not JSON we can read: nested too deeply") from None


def _json_items(text: str) -> list[tuple[str, object]]:
    data = _loads(text)
    if not isinstance(data, list):
        raise ValidationError('must be a JSON array of objects, e.g. [{"argv": ["echo", "1"]}]')
    return [(f"item {number}", item) for number, item in enumerate(data, start=1)]


def _jsonl_items(text: str) -> list[tuple[str, object]]:
    # Split on newlines only: str.splitlines() would also cut at U+2028, which JSON allows
    # unescaped inside a string.
    return [
        (f"line {number}", line)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def _json_line_row(where: str, line) -> ParamRow:
    return _object_row(where, _loads(line))


def _object_row(where: str, item) -> ParamRow:
    if not isinstance(item, dict):
        raise ValidationError(
            f"must be an object with argv, env and/or name, not {short_repr(item, 60)}"
        )
    problems = []
    if unknown := sorted(set(item) - set(PARAM_KEYS)):
        problems.append(f"unknown keys {', '.join(map(repr, unknown))} (expected argv, env, name)")
    argv, env, name = item.get("argv"), item.get("env") or {}, item.get("name")
    if argv is not None and not (
        isinstance(argv, list) and all(isinstance(arg, str) for arg in argv)
    ):
        problems.append("argv: must be a list of strings")
    if not (isinstance(env, dict) and all(isinstance(value, str) for value in env.values())):
        problems.append("env: must be an object of strings")
    if name is not None and not isinstance(name, str):
        problems.append("name: must be a string")
    if problems:
        raise ValidationError(problems)
    return ParamRow(where, argv=argv, env=env, name=name)


def _csv_records(text: str) -> tuple[list[str], list[tuple[str, object]]]:
    """The header, and each later record with the line it starts on (blank lines skipped)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    records: list[tuple[str, object]] = []
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            if record:
                if header is None:
                    header = record
                else:
                    records.append((f"line {start}", record))
            start = reader.line_num + 1
    except csv.Error as error:
        raise ValidationError(f"line {start}: not CSV: {error}") from None
    if header is None:
        raise ValidationError("no header row: name the columns, e.g. argv,name,INPUT")
    _check_header(header)
    return header, records


def _check_header(header: list[str]) -> None:
    problems = []
    if duplicated := sorted({column for column in header if header.count(column) > 1}):
        problems.append(f"columns named twice: {', '.join(duplicated)}")
    for column in header:
        if column not in PARAM_KEYS:
            try:
                envfile.validate_key(column, f"column {short_repr(column, 40)}: ")
            except ValidationError as error:
                problems += error.messages
    if problems:
        raise ValidationError([f"line 1 (the header): {problem}" for problem in problems])


def _csv_row_maker(header: list[str]) -> Callable[[str, Any], ParamRow]:
    def csv_row(where: str, record) -> ParamRow:
        if len(record) != len(header):
            raise ValidationError(f"has {len(record)} fields; the header has {len(header)}")
        cells = dict(zip(header, record, strict=True))
        argv_text, name = cells.pop("argv", ""), cells.pop("name", "")
        try:
            # An empty cell leaves the spec's command (or name) as it is.
            argv = shlex.split(argv_text) if argv_text else None
        except ValueError as error:
            raise ValidationError(f"argv: not a shell command line: {error}") from None
        return ParamRow(where, argv=argv, env=cells, name=name or None)

    return csv_row


# -- the spec ------------------------------------------------------------------------------

# What a spec may give: create_job's arguments, and the ContainerJob fields that say what to
# run and how (the host, environment and template under create_job's names).
SPEC_KEYS = frozenset(
    {"image", "command", "host", "env", "env_template", "secrets", "hold", "scheduled_for"}
    | set(api.SPEC_FIELDS) - {"requested_host", "environment_overrides", "environment_template"}
)


def read_spec(text: str) -> dict:
    """The spec in ``text``: a JSON object of ``api.create_job``'s arguments (see SPEC_KEYS).
    Raises ValidationError naming unknown keys and misshapen ones."""
    spec = _loads(text)
    check_spec(spec)
    return spec


def check_spec(spec) -> None:
    """Refuse a spec that is not an object of known keys, or whose env, secrets or command
    cannot be combined with a row's; the values themselves are the jobs' validation's."""
    if not isinstance(spec, dict):
        raise ValidationError('must be a JSON object, e.g. {"image": "alpine:3.20"}')
    problems = []
    if unknown := sorted(set(spec) - SPEC_KEYS):
        problems.append(
            f"unknown keys {', '.join(map(repr, unknown))} (known: {', '.join(sorted(SPEC_KEYS))})"
        )
    if "image" not in spec:
        problems.append("image: is required (e.g. alpine:3.20)")
    for key in ("env", "secrets"):
        if not isinstance(spec.get(key) or {}, dict):
            problems.append(f"{key}: must be an object of strings")
    if problems:
        raise ValidationError(problems)


# -- creating ------------------------------------------------------------------------------


def _with_row(spec: dict, row: ParamRow) -> dict:
    arguments = {**spec, "env": {**(spec.get("env") or {}), **row.env}}
    if row.argv is not None:
        arguments["command"] = row.argv
    if row.name is not None:
        arguments["name"] = row.name
    return arguments


def create_jobs(
    spec: dict,
    rows: Iterable[ParamRow],
    *,
    created_by=None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> BulkResult:
    """A job per row: the spec with the row's argv, env and name, validated as
    ``api.create_job`` validates. If the spec or any row is invalid nothing is created, and
    ``failed`` names each ("spec", "line 4"); otherwise all are inserted in one transaction,
    ``batch_size`` rows per INSERT, calling ``progress(done, total)`` after each batch.
    """
    built = _build_jobs(spec, rows, created_by)
    if isinstance(built, BulkResult):
        return built
    _insert(built, batch_size, progress)
    return BulkResult(succeeded=built)


def _build_jobs(
    spec: dict, rows: Iterable[ParamRow], created_by
) -> "list[ContainerJob] | BulkResult":
    """A validated, unsaved job per row; else a BulkResult naming each refusal."""
    try:
        check_spec(spec)
        # The spec alone, checked once: its host, template and creator exist and a host
        # could take it. Every row has the same ones, so rows skip these queries.
        alone = api.build_job(**spec, created_by=created_by)
    except ValidationError as error:
        return BulkResult(failed=[Failure("spec", _reason(error))])
    spec = {**spec, "host": alone.requested_host, "env_template": alone.environment_template}
    jobs, failed = [], []
    for row in rows:
        try:
            jobs.append(
                api.build_job(
                    **_with_row(spec, row), created_by=created_by, references_checked=True
                )
            )
        except ValidationError as error:
            failed.append(Failure(row.where, _reason(error)))
    if failed:
        return BulkResult(failed=failed)
    return jobs


# -- arrays --------------------------------------------------------------------------------

INDEX_VARIABLE, SIZE_VARIABLE = "JOB_ARRAY_INDEX", "JOB_ARRAY_SIZE"
# Members are built in memory and inserted in one transaction: bound what one call holds.
MAX_ARRAY_SIZE = 10_000


@dataclass
class ArrayResult(BulkResult):
    array: JobArray | None = None  # the array created (None when nothing was)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "array": str(self.array.pk) if self.array else None}


def _array_variable_problems(spec: dict, rows: list[ParamRow]) -> list[Failure]:
    """The spec and rows that set the variables the array sets for each member."""
    ours = {INDEX_VARIABLE, SIZE_VARIABLE}
    given = [("spec", key, spec.get(key) or {}) for key in ("env", "secrets")]
    given += [(row.where, "env", row.env) for row in rows]
    return [
        Failure(where, f"{key}: {', '.join(sorted(taken))} is set by the array; leave it out")
        for where, key, env in given
        if isinstance(env, dict) and (taken := ours & set(env))
    ]


def _array_arguments(size, rows, parallelism) -> list[ParamRow]:
    """The members' rows: ``rows``, or ``size`` empty ones. Raises ValidationError naming
    ``size``, ``rows`` or ``parallelism``."""
    if (size is None) == (rows is None):
        raise ValidationError({"size": "give either a size or parameter rows, not both"})
    if rows is not None:
        rows = list(rows)
        if not rows:
            raise ValidationError({"rows": "no rows: an array needs at least one member"})
    elif isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValidationError({"size": f"must be a positive whole number, not {short_repr(size)}"})
    else:
        rows = [ParamRow(f"index {index}") for index in range(size)]
    if len(rows) > MAX_ARRAY_SIZE:
        raise ValidationError(
            {"size": f"{len(rows):,} members; at most {MAX_ARRAY_SIZE:,} (MAX_ARRAY_SIZE)"}
        )
    if parallelism is not None and (
        isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1
    ):
        raise ValidationError(
            {"parallelism": f"must be a positive whole number, not {short_repr(parallelism)}"}
        )
    return rows


def _default_array_name(spec) -> str:
    """The spec's name, else its image (a spec without either is refused later)."""
    if not isinstance(spec, dict):
        return ""
    for key in ("name", "image"):
        if isinstance(spec.get(key), str) and spec[key]:
            return spec[key]
    return ""


def create_array(
    spec: dict,
    size: int | None = None,
    rows: Iterable[ParamRow] | None = None,
    *,
    parallelism: int | None = None,
    name: str = "",
    created_by=None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayResult:
    """A job array: ``size`` members of ``spec``, or one per parameter row (as
    ``create_jobs`` makes them), each with ``JOB_ARRAY_INDEX`` (0 to N-1) and
    ``JOB_ARRAY_SIZE`` in its environment and named ``<name>[<index>]`` (unless its row names
    it). ``name`` defaults to the spec's name, else its image. At most ``parallelism``
    members launch or run at once (None: no limit).

    All or nothing: if an argument, the spec or any row is invalid, nothing is created and
    ``failed`` names each ("size", "spec", "line 4"); a spec or row that sets the array's
    variables itself is refused.
    """
    try:
        member_rows = _array_arguments(size, rows, parallelism)
    except ValidationError as error:
        return ArrayResult(
            failed=[
                Failure(field, "; ".join(errors)) for field, errors in error.message_dict.items()
            ]
        )
    if problems := _array_variable_problems(spec if isinstance(spec, dict) else {}, member_rows):
        return ArrayResult(failed=problems)
    base = name or _default_array_name(spec)
    count = len(member_rows)
    indexed = [
        replace(
            row,
            env={**row.env, INDEX_VARIABLE: str(index), SIZE_VARIABLE: str(count)},
            name=row.name if row.name is not None else f"{base}[{index}]",
        )
        for index, row in enumerate(member_rows)
    ]
    built = _build_jobs(spec, indexed, created_by)
    if isinstance(built, BulkResult):
        return ArrayResult(failed=built.failed)
    array = JobArray(name=base, size=count, parallelism=parallelism, created_by=created_by)
    for index, job in enumerate(built):
        job.array, job.array_index = array, index
    with transaction.atomic():
        array.save(force_insert=True)
        _insert(built, batch_size, progress)
    return ArrayResult(succeeded=built, array=array)


def cancel_array(array: JobArray, *, batch_size: int = BATCH_SIZE) -> BulkResult:
    """Cancel every member of ``array`` that has not ended (running ones: their workers
    stop them); see cancel_jobs."""
    return cancel_jobs(array.members.exclude(status__in=TERMINAL), batch_size=batch_size)


def retry_array(
    array: JobArray, *, failed_only: bool = False, batch_size: int = BATCH_SIZE
) -> BulkResult:
    """Queue again the members of ``array`` that failed, timed out or were cancelled
    (``failed_only``: not the cancelled ones); see retry_jobs."""
    statuses = FAILURES if failed_only else RETRYABLE
    return retry_jobs(array.members.filter(status__in=statuses), batch_size=batch_size)


def _ready_to_insert(job: ContainerJob, now) -> None:
    """What ``ContainerJob.save()`` does before an INSERT, which ``bulk_create`` skips."""
    check_transition(None, job.status)
    if job.status == JobStatus.QUEUED and job.queued_at is None:
        job.queued_at = now
    job.environment_overrides = sealing.seal_environment(job.environment_overrides)


def _insert(jobs: list[ContainerJob], batch_size: int, progress) -> None:
    now = timezone.now()
    for job in jobs:
        _ready_to_insert(job, now)
    with transaction.atomic():
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            ContainerJob.objects.bulk_create(batch, batch_size=batch_size)
            if progress is not None:
                progress(start + len(batch), len(jobs))
    for job in jobs:
        job._loaded_status = job.status  # as save() leaves it: transition() relies on it
        signals.announce(job, None, job.status)


# -- operating on jobs ---------------------------------------------------------------------

Jobs = QuerySet[ContainerJob] | Iterable[ContainerJob | uuid.UUID | str]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _walk(jobs: Jobs, batch_size: int) -> Iterator[ContainerJob | Failure]:
    """Each job once, ``batch_size`` at a time: a QuerySet page by page (by primary key, so
    jobs leaving its filter as they are done skip nothing); ids looked up a batch at a
    time, a Failure for each that names no job."""
    if isinstance(jobs, QuerySet):
        yield from _walk_queryset(jobs, batch_size)
        return
    seen: set[uuid.UUID] = set()
    for chunk in _chunks(jobs, batch_size):
        ids = {item: as_job_id(item) for item in chunk if not isinstance(item, ContainerJob)}
        found = ContainerJob.objects.select_related("host").in_bulk(
            [pk for pk in ids.values() if pk is not None]
        )
        for item in chunk:
            job = item if isinstance(item, ContainerJob) else found.get(ids[item])
            if job is None:
                known = ids[item] is not None
                yield Failure(str(item), "no job with this id" if known else "not a job id")
            elif job.pk not in seen:  # the same job given twice is done once
                seen.add(job.pk)
                yield job


def _walk_queryset(jobs: QuerySet[ContainerJob], batch_size: int) -> Iterator[ContainerJob]:
    jobs = jobs.select_related("host").order_by("pk")
    last = None
    while True:
        page = jobs if last is None else jobs.filter(pk__gt=last)
        batch = list(page[:batch_size])
        yield from batch
        if len(batch) < batch_size:
            return
        last = batch[-1].pk


def _apply(
    jobs: Jobs, operation: Callable[[ContainerJob], ContainerJob], batch_size: int
) -> BulkResult:
    """``operation`` on each job; what it returns is the job done. A refusal is that job's
    Failure, and the others go on."""
    result = BulkResult()
    for batch in _chunks(_walk(jobs, batch_size), batch_size):
        # One commit per batch, not per job: on SQLite each commit is a disk sync, and
        # releasing 3,000 held jobs one commit at a time took over 30 s beside a worker.
        with transaction.atomic():
            for job in batch:
                if isinstance(job, Failure):
                    result.failed.append(job)
                    continue
                try:
                    result.succeeded.append(operation(job))
                except ContainerJob.DoesNotExist:
                    result.failed.append(Failure(str(job.pk), "no longer exists"))
                except (ValidationError, InvalidTransition, SecretError) as error:
                    result.failed.append(Failure(str(job.pk), _reason(error)))
    return result


def cancel_jobs(jobs: Jobs, *, batch_size: int = BATCH_SIZE) -> BulkResult:
    """Cancel each job (a running one: its worker is asked to stop it); see api.cancel_job."""
    return _apply(jobs, api.cancel_job, batch_size)


def retry_jobs(jobs: Jobs, *, batch_size: int = BATCH_SIZE) -> BulkResult:
    """Queue each failed, timed-out or cancelled job again; see api.retry_job."""
    return _apply(jobs, api.retry_job, batch_size)


def release_jobs(jobs: Jobs, *, batch_size: int = BATCH_SIZE) -> BulkResult:
    """Queue each held (pending) job to run; see api.release_job."""
    return _apply(jobs, api.release_job, batch_size)


def reroute_jobs(
    jobs: Jobs, host: ExecutorHost | str, *, batch_size: int = BATCH_SIZE
) -> BulkResult:
    """Re-queue each job on ``host`` (a host, a fallback chain, or its name); see
    api.reroute_job. An unknown host name raises ValidationError before any job is touched."""
    target = api.lookup_host(host)
    return _apply(jobs, lambda job: api.reroute_job(job, target), batch_size)


def duplicate_jobs(jobs: Jobs, *, created_by=None, batch_size: int = BATCH_SIZE) -> BulkResult:
    """Run each job again with the same spec: ``succeeded`` holds the new, queued jobs; see
    api.duplicate_job."""
    return _apply(jobs, lambda job: api.duplicate_job(job, created_by=created_by), batch_size)


def delete_jobs(jobs: Jobs, *, batch_size: int = BATCH_SIZE) -> BulkResult:
    """Delete each job and its attempts, refusing those a worker holds; see api.delete_job."""

    def delete(job: ContainerJob) -> ContainerJob:
        api.delete_job(job)
        return job

    return _apply(jobs, delete, batch_size)
