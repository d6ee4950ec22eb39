"""Run jobs as executions of Cloud Run Jobs (Google Cloud), through the official clients.

One module per concern: ``config`` (the host's executor_config), ``connection`` (the Cloud
Run and Cloud Logging clients, credentials, what their errors mean), ``definitions`` (the
Cloud Run Job a job runs as, the overrides of one run, what Cloud Run cannot confine),
``logs`` (stdout and stderr from Cloud Logging, capped) and ``executor`` (the lifecycle).

The Google libraries are imported only when a client is needed: without them this package
imports, and connecting says how to install them (``pip install
'django-container-jobs[cloudrun]'``).
"""

from .executor import CloudRunExecutor

__all__ = ["CloudRunExecutor"]
