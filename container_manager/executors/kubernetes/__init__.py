"""Run jobs as Kubernetes Jobs (``batch/v1``), through the official ``kubernetes`` client.

One module per concern: ``connection`` (the client library, imported lazily; where the API
server is; what a failed call means), ``manifests`` (the host's executor_config; the Job and
the Secrets an attempt is run with: limits, confinement, labels) and ``executor`` (the
lifecycle: launch, wait, harvest, stop, cleanup, health).

The ``kubernetes`` package is optional (``pip install 'django-container-jobs[kubernetes]'``):
this package imports without it, and an executor without it is unhealthy and says so.

``executor_config`` options: ``namespace`` (default ``"default"``); where the API server is:
``api_url`` (else the host's ``connection_string``) with ``token_file``, or ``in_cluster``, or
``kubeconfig`` and ``context``; ``ttl_seconds_after_finished`` (default 3600);
``image_pull_policy``; ``image_pull_timeout`` (seconds a pod may fail to pull its image before
the attempt counts as ended, default 300); ``service_account_name``; ``split_log_streams``
(ask for stdout and stderr apart, on clusters with the ``PodLogsQuerySplitStreams`` feature);
``timeout`` (seconds to wait for an answer, default 30).
"""

from .executor import KubernetesExecutor
from .manifests import job_manifest, job_name, secret_manifests, security_context

__all__ = [
    "KubernetesExecutor",
    "job_manifest",
    "job_name",
    "secret_manifests",
    "security_context",
]
