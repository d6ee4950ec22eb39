"""The mock backend: told what each execution produces."""

from container_manager.executors.mock import MockExecutor
from container_manager.spec import HostSpec

MARKS = []
CAN_LIST = False  # executions live in the process that made them


def make_executor(request, seconds, exit_code, stdout, stderr):
    config = {
        "duration_seconds": seconds,
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": stderr,
    }
    return MockExecutor(HostSpec(name="contract-mock", executor_type="mock", config=config))
