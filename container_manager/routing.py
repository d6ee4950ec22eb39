"""Choosing a host for a job that did not name one."""

from django.core.exceptions import ValidationError
from django.db.models import Count, Q

from .models import ExecutorHost
from .states import ACTIVE


def choose_host(hosts=None):
    """The active host with the most free capacity, relative to its weight.

    Raises ValidationError on ``host`` when no active host exists.
    """
    hosts = (hosts if hosts is not None else ExecutorHost.objects.all()).filter(is_active=True)
    hosts = hosts.annotate(load=Count("jobs", filter=Q(jobs__status__in=ACTIVE)))
    best = max(
        hosts,
        key=lambda h: (h.max_concurrent_jobs - h.load) * max(h.weight, 1),
        default=None,
    )
    if best is None:
        raise ValidationError({"host": "no active executor host is configured"})
    return best
