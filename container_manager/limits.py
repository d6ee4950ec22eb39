"""What a job may carry: the size of its command and of its environment.

A job's argv and environment are stored in its row, read whenever the job is, and sent to
the engine in one request; ``MAX_COMMAND_BYTES``, ``MAX_ENV_VARS`` and ``MAX_ENV_BYTES`` keep
a job from carrying megabytes there. Sizes are UTF-8 bytes of what the container gets: a
sealed secret counts in clear, so a value measures the same before and after it is sealed.
Each function answers with a message for a field error, or None.
"""

import contextlib

from . import secrets
from .conf import setting


def _bytes(text) -> int:
    """UTF-8 size of a string; anything else counts 0 (its own validation reports it)."""
    if not isinstance(text, str):
        return 0
    # surrogatepass: a lone surrogate must be measured, not crash the measuring.
    return len(text.encode("utf-8", "surrogatepass"))


def _over(size: int, setting_name: str, what: str, unit: str) -> str | None:
    limit = setting(setting_name)
    if size <= limit:
        return None
    return f"{what} {size:,} {unit}; at most {limit:,} are allowed ({setting_name})"


def command_size_error(argv) -> str | None:
    """Why ``argv`` (a list of strings) is too big, or None."""
    return _over(sum(_bytes(arg) for arg in argv), "MAX_COMMAND_BYTES", "the command is", "bytes")


def _clear_bytes(name, value) -> int:
    # A value no key opens is reported on its own (sealed_value_errors); its stored form
    # stands in for it here.
    with contextlib.suppress(secrets.SecretError):
        value = secrets.unseal(value, name)
    return _bytes(value)


def env_size_error(env: dict, what: str = "the environment") -> str | None:
    """Why the variables ``env`` are too many or too big, or None.

    The count comes first: it is cheap, and it bounds how many values are then unsealed.
    """
    return _over(len(env), "MAX_ENV_VARS", f"{what} has", "variables") or _over(
        sum(_bytes(name) + _clear_bytes(name, value) for name, value in env.items()),
        "MAX_ENV_BYTES",
        f"{what} is",
        "bytes",
    )
