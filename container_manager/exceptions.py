"""Every error the app raises on purpose, under one base, ``ContainerManagerError``.

This module imports nothing from the app, so any layer may raise these and any caller may
catch them without pulling in models or executors.
"""

from django.core.exceptions import ValidationError


class ContainerManagerError(Exception):
    """The base of the app's own errors."""


class ExecutorError(ContainerManagerError):
    """Something an executor could not do; the message is written on the job as it is."""


class LaunchError(ExecutorError):
    """The job could not be started there, for a reason of its own (bad image, rejected
    request...): another host would refuse it too."""


class HostError(ExecutorError):
    """The host, not the job, is the trouble: another host may well run the job.

    ``maybe_started``: the host went away in the middle of starting the execution, so it may
    be running there; the launch must look for it there before trying anywhere else.
    """

    def __init__(self, *args: object, maybe_started: bool = False) -> None:
        super().__init__(*args)
        self.maybe_started = maybe_started


class ExecutorUnavailable(HostError):
    """The backend could not be reached at all (daemon down, network, timeout)."""


class HostRefused(HostError):
    """The backend answered but would not start anything: credentials refused, no capacity."""


class SecretError(ContainerManagerError):
    """A sealed value that cannot be unsealed. The message names the variable, never a value."""


class PolicyViolation(ValidationError, ContainerManagerError):
    """A job asks for something the container policy does not allow ({field: message})."""


class ContainerTaskError(ContainerManagerError):
    """A task's container ended without a result: it failed, timed out, was cancelled or
    printed none (the Tasks backend's error when the task itself raised nothing)."""
