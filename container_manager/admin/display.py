"""How a job's facts look in the admin: status badges, durations that tick, human units.

Everything here returns escaped HTML (``format_html``): names, commands and output are
the users' text and are shown as text, never as markup.
"""

from datetime import datetime

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from ..fields import short_repr
from ..models import ContainerJob
from ..units import human_bytes, human_duration, local_time


def iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


def when(moment: datetime | None) -> str:
    return local_time(moment) if moment else "—"


def status_badge(job: ContainerJob) -> SafeString:
    label = job.get_status_display()
    if job.cancel_requested_at and not job.is_terminal:
        label += " · cancelling"
    return format_html(
        '<span class="cm-badge cm-status-{}" data-status="{}">{}</span>',
        job.status,
        job.status,
        label,
    )


def duration(job: ContainerJob) -> SafeString:
    """The run time; a running job's ticks in the browser (``job.js``) from its start."""
    if job.started_at is None:
        return mark_safe('<span class="cm-duration">—</span>')
    end = job.finished_at or (None if job.status == job.Status.RUNNING else job.started_at)
    shown = human_duration((end or timezone.now()) - job.started_at)
    return format_html(
        '<span class="cm-duration" data-started="{}" data-finished="{}">{}</span>',
        iso(job.started_at),
        iso(end),
        shown,
    )


def clipped(text: str) -> SafeString:
    """Text cut to its column's width by CSS, whole in its tooltip."""
    return format_html('<span class="cm-clip" title="{}">{}</span>', text, text)


def name_and_image(job: ContainerJob) -> SafeString:
    """The list's job column: its name over its image, each cut to the column's width."""
    return format_html(
        '<span class="cm-clip cm-name" title="{}">{}</span>'
        '<span class="cm-clip cm-image" title="{}">{}</span>',
        job.name,
        job.name or "(no name)",
        job.image,
        job.image,
    )


def compact_time(moment: datetime) -> SafeString:
    """``11-26 20:30``, in full in its tooltip: a narrow column for the list."""
    local = timezone.localtime(moment)
    return format_html(
        '<span title="{}">{}</span>',
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
        local.strftime("%m-%d %H:%M"),
    )


def confinement(job: ContainerJob) -> list[str]:
    """What the job may do beyond the safe defaults, one loosening a line (none: [])."""
    lines = [
        label
        for label, on in [
            ("privileged", job.privileged),
            ("host network", job.host_network),
            ("host PID namespace", job.host_pid),
            ("read-only root filesystem", job.read_only_root),
        ]
        if on
    ]
    if job.run_as_user:
        lines.append(f"runs as {job.run_as_user}")
    if job.capabilities:
        lines.append(f"capabilities {short_repr(job.capabilities)}")
    if job.mounts:
        lines.append(f"mounts {short_repr(job.mounts)}")
    return lines


def size(value: int | None) -> str:
    return "—" if value is None else human_bytes(value)


def cpu_time(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def job_url(job_id) -> str:
    return reverse("admin:container_manager_containerjob_change", args=[job_id])


def array_url(array_id) -> str:
    return reverse("admin:container_manager_jobarray_change", args=[array_id])


def members_url(array_id) -> str:
    """The job list, showing only the members of the array (ordered by the list's own)."""
    return reverse("admin:container_manager_containerjob_changelist") + f"?array__exact={array_id}"


def array_membership(job: ContainerJob) -> SafeString | str:
    """A member's array (a link) and its index; "—" for a job of no array."""
    if job.array_id is None:
        return "—"
    array = job.array
    assert array is not None  # array_id says it has one
    return format_html(
        '<a href="{}">{}</a>, index {} of {}',
        array_url(array.pk),
        array,
        job.array_index,
        array.size,
    )


def schedule_runs_url(schedule_id) -> str:
    """The job list, showing only the runs a schedule made."""
    changelist = reverse("admin:container_manager_containerjob_changelist")
    return f"{changelist}?schedule__exact={schedule_id}"


def schedule_run(job: ContainerJob) -> SafeString | str:
    """The schedule that made ``job`` (a link) and the due time it ran for; "—" if none."""
    if job.schedule_id is None:
        return "—"
    schedule = job.schedule
    assert schedule is not None  # schedule_id says it has one
    return format_html(
        '<a href="{}">{}</a>, due {}',
        reverse("admin:container_manager_schedule_change", args=[schedule.pk]),
        schedule,
        when(job.scheduled_run_at),
    )
