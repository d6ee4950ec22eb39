"""How a task's container hands its result back: the last line of its output.

Shared by the Tasks backend (``tasks_backend``), which reads it from the job's stored output,
and ``run_container_task``, which prints it inside the container. Kept apart from the backend
so the container needs no Tasks framework to print it.
"""

import json
from typing import Any

# The marker, a space, and JSON: {"return_value": ...} or {"error": {"exception_class_path":
# ..., "traceback": ...}}.
RESULT_MARKER = "container-jobs-task-result:"


def result_line(outcome: dict[str, Any]) -> str:
    return f"{RESULT_MARKER} {json.dumps(outcome)}"


def printed_result(stdout: str) -> dict[str, Any] | None:
    """The outcome the container printed last, or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                found = json.loads(line[len(RESULT_MARKER) :])
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None
