"""Parse ``KEY=value`` environment text, as stored in EnvironmentVariableTemplate."""

import re

from django.core.exceptions import ValidationError

from .fields import NUL_MESSAGE, short_repr

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_key(key: str, where: str = "") -> None:
    # fullmatch: with match(), "$" would let a name end in a newline.
    if not (isinstance(key, str) and KEY_RE.fullmatch(key)):
        raise ValidationError(
            f"{where}invalid variable name {short_repr(key)}: use letters, digits and "
            "underscores, not starting with a digit"
        )


def validate_value(key: str, value, where: str = "") -> None:
    if not isinstance(value, str):
        raise ValidationError(f"{where}value of {key} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ValidationError(f"{where}value of {key} {NUL_MESSAGE}")


def split_line(line: str):
    """One line of template text, split the way ``parse_env_text`` reads it.

    None for a blank or ``#`` comment line; otherwise ``(head, key, value)`` where ``key`` is
    the stripped name and ``value`` everything after the first ``=`` (None when there is no
    ``=``). ``head + value`` rebuilds the line without its trailing blanks: ``head`` keeps
    any indentation, an ``export`` and the ``=``, so a value can be replaced in place.
    """
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    body = line.lstrip()
    head = line[: len(line) - len(body)]
    if body.startswith("export "):
        rest = body[len("export ") :]
        head += "export " + rest[: len(rest) - len(rest.lstrip())]
        body = rest.lstrip()
    key, sep, value = body.partition("=")
    if not sep:
        return head, key.strip(), None
    return head + key + sep, key.strip(), value.rstrip()


def parse_env_text(text: str) -> dict[str, str]:
    """Parse one ``KEY=value`` per line; blank lines and ``#`` comments are skipped.

    Everything after the first ``=`` is the value, verbatim (it may contain ``=``, quotes or
    ``#``); an optional leading ``export`` is accepted. Errors name the line.
    """
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        parts = split_line(raw)
        if parts is None:
            continue
        _, key, value = parts
        where = f"line {number}: "
        if value is None:
            raise ValidationError(f"{where}expected KEY=value, got {short_repr(raw.strip())}")
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
