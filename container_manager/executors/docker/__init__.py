"""Run jobs as containers on a Docker engine, local (unix socket) or remote (``tcp://``, TLS).

One module per concern: ``connection`` (where the engine is, TLS, the remote-engine rule, what
an unreachable engine means), ``options`` (the host's executor_config; what a container is
created with: limits, confinement, labels, log bounds), ``usage`` (peak memory and CPU from the
stats stream), ``logs`` (stdout and stderr within the cap and the job's time), and
``executor`` (the lifecycle: launch, wait, harvest, stop, cleanup, health).

Host fields: ``connection_string`` (blank: ``DOCKER_HOST`` and friends, as ``docker.from_env``
reads them). TLS is used when any of ``tls_ca_cert`` / ``tls_client_cert`` / ``tls_client_key``
is set (a client certificate needs both of its files); ``tls_verify`` says whether the engine's
certificate is checked, against ``tls_ca_cert`` or else the default CAs.

``executor_config`` options:

- ``pull_policy``: ``"never"``, ``"if-missing"`` (default) or ``"always"``.
- ``auto_remove``: let the engine delete the container as soon as it exits (default False).
  The exit code is still known when this executor saw the container end, but its output is
  lost; by default containers are removed by ``cleanup`` after their output is harvested.
- ``network``: the container's network mode (``"none"``, a network name...); a job with
  ``host_network`` gets ``"host"`` instead.
- ``timeout``: seconds to wait for an answer from the engine (default 60).
"""

from .connection import insecure_connection
from .executor import DockerExecutor
from .options import confinement_options, log_config

__all__ = ["DockerExecutor", "confinement_options", "insecure_connection", "log_config"]
