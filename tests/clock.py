"""A clock tests move by hand, for schedules (the ``CLOCK`` setting is ``tests.clock.now``).

The time is kept in a file named by ``TEST_CLOCK_FILE``, so worker processes a test starts
read the same clock as the test itself.
"""

import os
from datetime import UTC, datetime
from pathlib import Path

FILE_VARIABLE = "TEST_CLOCK_FILE"
SETTINGS = {"CLOCK": "tests.clock.now"}


def now() -> datetime:
    return datetime.fromtimestamp(float(Path(os.environ[FILE_VARIABLE]).read_text()), UTC)


def set_to(moment: datetime) -> None:
    """Move the clock to ``moment`` (aware), atomically for readers in other processes."""
    path = Path(os.environ[FILE_VARIABLE])
    temporary = path.with_suffix(".tmp")
    temporary.write_text(repr(moment.timestamp()))
    temporary.replace(path)
