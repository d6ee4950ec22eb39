"""The Kubernetes backend against the stand-in API server (tests/standins/kubernetes.py), which
is told what each Job's pod produces.

Kubernetes serves a container's stdout and stderr as one log, which this executor reports as
stdout by default (tests/test_kubernetes_executor.py checks that). This host turns on
``split_log_streams``: the pod log's ``stream=Stdout|Stderr`` parameter (the
``PodLogsQuerySplitStreams`` feature), which the stand-in answers, so the streams come back
apart and ``MERGED_STREAMS`` is False.
"""

import uuid

from container_manager.executors.kubernetes import KubernetesExecutor
from container_manager.spec import HostSpec

from ..standins.kubernetes import use_standin

MARKS = []
CAN_LIST = True
MERGED_STREAMS = False


def make_executor(request, seconds, exit_code, stdout, stderr):
    standin = use_standin(request)
    standin.behave(seconds=seconds, exit_code=exit_code, stdout=stdout, stderr=stderr)
    host = HostSpec(
        name=f"contract-k8s-{uuid.uuid4().hex[:8]}",
        executor_type="kubernetes",
        config={"api_url": standin.url, "namespace": "default", "split_log_streams": True},
    )
    return KubernetesExecutor(host)


def api(request, executor):
    """The stand-in answering ``executor`` (``stop`` and ``restart`` it)."""
    return use_standin(request)
