"""The Fargate backend on the moto stand-in (tests/standins/fargate.py), a cluster per host.

Moto runs no container: the stand-in ends each task after ``seconds`` with ``exit_code`` and
puts its output in the task's CloudWatch Logs stream. CloudWatch keeps one stream per
container, stdout and stderr interleaved with nothing telling them apart, so the executor
reports all of it as stdout and an empty stderr: for this contract's command that is
``(3, "hi\\noops\\n", "")``, never ``(3, "hi\\n", "oops\\n")``. ``MERGED_STREAMS`` says so.
"""

from container_manager.executors.fargate import FargateExecutor

from ..standins.fargate import standin

MARKS = []
CAN_LIST = True
# stdout and stderr come back as one stream, in stdout (stderr is always "").
MERGED_STREAMS = True


def make_executor(request, seconds, exit_code, stdout, stderr):
    fargate = standin(request)
    host = fargate.host(log_settle_seconds=0)  # the stand-in's log is complete at once
    # Written in the order the contract's command prints them, into the one log stream.
    fargate.behave(
        host.config["cluster"], seconds=seconds, exit_code=exit_code, stdout=stdout + stderr
    )
    return FargateExecutor(host)


def api(request, executor):
    """The stand-in answering ``executor`` (``stop`` and ``restart`` it)."""
    return standin(request)
