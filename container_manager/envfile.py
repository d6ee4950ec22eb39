"""Parse ``KEY=value`` environment text, as stored in EnvironmentVariableTemplate."""

import re

from django.core.exceptions import ValidationError

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_key(key: str, where: str = "") -> None:
    if not KEY_RE.match(key):
        raise ValidationError(
            f"{where}invalid variable name {key!r}: use letters, digits and underscores, "
            "not starting with a digit"
        )


def validate_value(key: str, value, where: str = "") -> None:
    if not isinstance(value, str):
        raise ValidationError(f"{where}value of {key} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ValidationError(f"{where}value of {key} contains a NUL byte")


def parse_env_text(text: str) -> dict[str, str]:
    """Parse one ``KEY=value`` per line; blank lines and ``#`` comments are skipped.

    Everything after the first ``=`` is the value, verbatim (it may contain ``=``, quotes or
    ``#``); an optional leading ``export`` is accepted. Errors name the line.
    """
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        where = f"line {number}: "
        if not sep:
            raise ValidationError(f"{where}expected KEY=value, got {raw.strip()!r}")
        key = key.strip()
        validate_key(key, where)
        validate_value(key, value, where)
        env[key] = value
    return env


def validate_env_mapping(env, field: str = "environment") -> None:
    if not isinstance(env, dict):
        raise ValidationError(f"{field} must be a mapping of NAME to value")
    for key, value in env.items():
        validate_key(key)
        validate_value(key, value)
