"""What a task's container runs (``tasks_backend``): import the task, call it, and print its
return value, or the exception it raised, as the last line of the output."""

import json
import traceback

from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from container_manager.task_protocol import result_line


class Command(BaseCommand):
    help = "Run one task of the Tasks framework and print its result (inside a task's container)."

    def add_arguments(self, parser):
        parser.add_argument(
            "payload", help='JSON: {"task": "module.path", "args": [], "kwargs": {}}'
        )

    def handle(self, *args, **options):
        try:
            payload = json.loads(options["payload"])
            task = import_string(payload["task"])
        except (ValueError, KeyError, ImportError) as error:
            raise CommandError(f"payload: {error}") from error
        try:
            value = task.call(*payload.get("args", []), **payload.get("kwargs", {}))
            line = result_line({"return_value": value})
        except Exception as error:  # the task's own failure: reported, with its traceback
            kind = type(error)
            self.stdout.write(
                "\n"
                + result_line(
                    {
                        "error": {
                            "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
                            "traceback": traceback.format_exc(),
                        }
                    }
                )
            )
            raise SystemExit(1) from None
        self.stdout.write("\n" + line)
