"""Routing: which host an attempt runs on, and why, in a sentence a person can read.

A job asks for a host by name (``requested_host``), for a fallback chain (a host whose type
names member hosts), or for nothing but an executor type and/or labels. The candidates are
then that host, the chain's members in order, or every active host whose type and labels fit.
Among them a host is *fit* when it is active, not unhealthy and has a free slot (its load
counted across all workers); fit hosts whose container policy refuses the job are passed over
while another allows it. A chain takes its first fit member; otherwise the least loaded host
relative to its weight wins (weighted least connections: a host of weight 200 gets twice the
jobs of one of weight 100 once both are busy), ties going to the name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from . import policy
from .models import ContainerJob, ExecutorHost


@dataclass(frozen=True)
class Route:
    host: ExecutorHost | None  # None: no host is fit now; the job waits
    reason: str


def candidates(job: ContainerJob, hosts: Iterable[ExecutorHost]) -> tuple[list[ExecutorHost], bool]:
    """The hosts ``job`` may run on, from ``hosts``; and whether their order is the job's
    (a chain) rather than routing's to choose."""
    hosts = list(hosts)
    requested = job.requested_host if job.requested_host_id else None
    if requested is not None:
        if names := requested.member_names:
            by_name = {host.name: host for host in hosts}
            return [by_name[name] for name in names if name in by_name], True
        return [host for host in hosts if host.pk == requested.pk], False
    wanted = job.host_labels if isinstance(job.host_labels, dict) else {}
    return [
        host
        for host in hosts
        if not host.member_names
        and (not job.executor_type or host.executor_type == job.executor_type)
        and all((host.labels or {}).get(key) == value for key, value in wanted.items())
    ], False


def route(
    job: ContainerJob,
    hosts: Iterable[ExecutorHost],
    loads: dict[int, int],
    exclude: Iterable[int] = (),
) -> Route:
    """The host for the job's next launch among ``hosts`` (with ``loads`` by host id), never
    one of ``exclude`` (hosts this attempt already tried)."""
    options, ordered = candidates(job, hosts)
    if not options:
        return Route(None, f"no host fits: {describe_request(job)}")
    excluded = set(exclude)
    fit, passed_over = [], []
    for host in options:
        problem = "tried already" if host.pk in excluded else _unfit(host, loads)
        if problem:
            passed_over.append(f"{host.name} {problem}")
        else:
            fit.append(host)
    if not fit:
        return Route(None, f"no host is fit now: {'; '.join(passed_over)}")
    # A host whose policy refuses the job is passed over while another allows it; when none
    # does, the launch fails with the policy's reason rather than wait for ever.
    refusals = {host.pk: _refusal(job, host) for host in fit}
    if allowed := [host for host in fit if not refusals[host.pk]]:
        passed_over += [f"{h.name} refuses it ({refusals[h.pk]})" for h in fit if refusals[h.pk]]
        fit = allowed
    if ordered:
        chosen = fit[0]
        chain = job.requested_host
        assert chain is not None  # candidates are in the job's order only for a requested chain
        why = f"{chosen.name}: the first fit host of chain {chain.name}"
    else:
        chosen = min(fit, key=lambda h: ((loads.get(h.pk, 0) + 1) / max(h.weight, 1), h.name))
        why = f"{chosen.name}: {_load(chosen, loads)}, weight {chosen.weight}"
        if len(fit) > 1:
            why += ", the least loaded for its weight of " + ", ".join(
                f"{h.name} ({_load(h, loads)}, weight {h.weight})" for h in fit if h != chosen
            )
    if passed_over:
        why += f"; passed over: {'; '.join(passed_over)}"
    return Route(chosen, why)


def check_routable(job: ContainerJob) -> None:
    """Raise ValidationError when no active host could ever take the job (no host of its
    type and labels, a chain of inactive hosts): better refused now than queued forever."""
    hosts = ExecutorHost.objects.filter(is_active=True)
    if job.requested_host_id or candidates(job, hosts)[0]:
        return
    field = "host_labels" if job.host_labels else "executor_type" if job.executor_type else "host"
    raise ValidationError({field: f"no active host fits: {describe_request(job)}"})


def _unfit(host: ExecutorHost, loads: dict[int, int]) -> str:
    if not host.is_active:
        return "is not active"
    if host.health_status == ExecutorHost.Health.UNHEALTHY:
        return f"is unhealthy ({host.health_message})" if host.health_message else "is unhealthy"
    if loads.get(host.pk, 0) >= host.max_concurrent_jobs:
        return f"is full ({_load(host, loads)})"
    return ""


def _refusal(job: ContainerJob, host: ExecutorHost) -> str:
    try:
        policy.check_job(job, host)
    except ValidationError as error:
        return policy.refusal(error)
    return ""


def _load(host: ExecutorHost, loads: dict[int, int]) -> str:
    return f"{loads.get(host.pk, 0)} of {host.max_concurrent_jobs} slots busy"


def describe_request(job: ContainerJob) -> str:
    """What the job asks routing for, in words (in errors, and in ``show``)."""
    wants = []
    requested = job.requested_host if job.requested_host_id else None
    if requested is not None:
        wants.append(f"host {requested.name}")
    if job.executor_type:
        wants.append(f"executor type {job.executor_type!r}")
    if job.host_labels:
        wants.append(f"labels {job.host_labels}")
    return ", ".join(wants) or "any active host"
