"""Run jobs as ECS tasks on AWS Fargate.

One module per concern: ``connection`` (boto3, loaded only when needed; the ECS and CloudWatch
Logs clients; what an AWS error means), ``options`` (the host's executor_config, checked),
``definitions`` (task definitions, reused per image, size and confinement; Fargate sizes;
what Fargate cannot confine and so refuses), ``logs`` (the task's output from CloudWatch) and
``executor`` (the lifecycle: run_task, describe_tasks, stop_task, the stopped record).

``executor_config``: ``cluster``, ``subnets``, ``security_groups``, ``log_group`` and
``execution_role_arn`` are required; ``assign_public_ip``, ``region``, ``launch_type``
(``FARGATE``, the default) or ``capacity_provider`` (``FARGATE`` or ``FARGATE_SPOT``),
``platform_version``, ``task_role_arn``, ``log_stream_prefix`` (default ``cm``),
``stop_timeout`` (seconds between SIGTERM and SIGKILL, 2 to 120, default 30),
``repository_credentials`` ({registry: Secrets Manager secret ARN}), ``poll_interval``
(seconds between describe_tasks while waiting, default 2), ``log_settle_seconds`` (how long
after a task stops its log is read, default 5) and ``endpoint_url`` (tests).

boto3 is optional: ``pip install 'django-container-jobs[fargate]'``. Without it this package
still imports; using a host raises ``ExecutorUnavailable`` saying so, and its health check is
unhealthy with that message.
"""

from .executor import FargateExecutor

__all__ = ["FargateExecutor"]
