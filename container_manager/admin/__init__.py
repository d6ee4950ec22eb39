"""The Django admin: configuration over the models; what it does, it asks of
``container_manager.api``, ``bulk_operations`` and ``overview``."""

from .arrays import JobArrayAdmin
from .hosts import (
    EnvironmentVariableTemplateAdmin,
    ExecutorHostAdmin,
    RegistryCredentialAdmin,
    WorkerAdmin,
)
from .jobs import ContainerJobAdmin
from .overview import QueueOverviewAdmin
from .schedules import ScheduleAdmin
from .tokens import ApiTokenAdmin
from .webhooks import WebhookDeliveryAdmin

__all__ = [
    "ApiTokenAdmin",
    "ContainerJobAdmin",
    "EnvironmentVariableTemplateAdmin",
    "ExecutorHostAdmin",
    "JobArrayAdmin",
    "QueueOverviewAdmin",
    "RegistryCredentialAdmin",
    "ScheduleAdmin",
    "WebhookDeliveryAdmin",
    "WorkerAdmin",
]
