"""Tasks of the example project, for Django's Tasks framework (``django.tasks`` in Django 6,
the ``django-tasks`` backport's ``django_tasks`` on 5.2).

With the container backend (README, "Django's Tasks framework"), each runs in a container of
the project's image: ``add.enqueue(2, 3)`` makes a job, and ``result.return_value`` is 5 once
it has ended.
"""

import platform

try:
    from django.tasks import task
except ImportError:  # Django 5.2
    from django_tasks import task


@task
def add(a, b):
    return a + b


@task
def where_am_i():
    """Where the task ran: the container's host name, not the worker's."""
    return platform.node()


@task
def fail(message):
    raise ValueError(message)
