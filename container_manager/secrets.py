"""Secret environment values: sealed (encrypted) at rest, masked when shown.

A value is *secret* when its variable's name matches one of ``SECRET_ENV_PATTERNS``
(shell-style, case-insensitive), or when it was sealed explicitly (``create_job(secrets=...)``).
A secret is stored *sealed*: ``cmsecret:v1:<Fernet token>``, a plain string, so sealed values
live in the existing JSON ``environment_overrides`` and in a template's ``KEY=value`` text
without any schema change.

Keys: ``ENCRYPTION_KEYS`` (Fernet keys) through ``MultiFernet``: the first key encrypts,
every key decrypts. Rotation: put a new key first, then ``rotation.reencrypt_all()`` (the command
``container_jobs_rotate_secrets``), then drop the old key. With no ``ENCRYPTION_KEYS`` the key
is derived from Django's ``SECRET_KEY`` (HKDF-SHA256 over a fixed label), and from each of
``SECRET_KEY_FALLBACKS`` for decryption, so Django's own way of changing ``SECRET_KEY``
(old key into the fallbacks, then re-encrypt) keeps secrets readable.

``ContainerJob.get_environment()`` is the one place values are unsealed: it is what an
executor receives. Everything else shows secrets as ``MASK``.
"""

from __future__ import annotations

import base64
import fnmatch
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .conf import setting
from .envfile import split_line
from .exceptions import SecretError

PREFIX = "cmsecret:v1:"
MASK = "••••••"
# HKDF's "info": binds a derived key to this use of SECRET_KEY and to this format version.
DERIVATION_LABEL = b"container_manager secrets at rest v1"


# -- which values are secret ---------------------------------------------------------------


def is_secret_key(name: str) -> bool:
    """Whether a variable of this name holds a secret (``SECRET_ENV_PATTERNS``, any case)."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in _patterns())


def _patterns() -> list[str]:
    patterns = setting("SECRET_ENV_PATTERNS")
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ImproperlyConfigured(
            "CONTAINER_MANAGER['SECRET_ENV_PATTERNS'] must be a list of shell-style patterns"
        )
    return list(patterns)


def is_sealed(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def is_secret(name: str, value) -> bool:
    """A value to hide: sealed, or held by a variable whose name says it is secret."""
    return is_sealed(value) or is_secret_key(name)


def mask(value=None) -> str:
    """What is shown instead of a secret: always the same, so nothing about it leaks."""
    return MASK


# -- keys --------------------------------------------------------------------------------


def derived_key(secret_key: str | bytes | None = None) -> bytes:
    """The Fernet key derived from ``secret_key`` (default: Django's ``SECRET_KEY``).

    List ``derived_key(OLD_SECRET_KEY)`` in ``ENCRYPTION_KEYS`` (or keep the old key in
    ``SECRET_KEY_FALLBACKS``) when changing ``SECRET_KEY`` without configured keys.
    """
    if secret_key is None:
        secret_key = settings.SECRET_KEY
    if isinstance(secret_key, str):
        secret_key = secret_key.encode()
    if not secret_key:
        raise ImproperlyConfigured(
            "container_manager needs SECRET_KEY (or ENCRYPTION_KEYS) to encrypt secrets"
        )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DERIVATION_LABEL)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key))


def _keys(configured, secret_key, fallbacks) -> list[bytes]:
    if isinstance(configured, str | bytes):
        raise ImproperlyConfigured(
            "CONTAINER_MANAGER['ENCRYPTION_KEYS'] must be a list of Fernet keys, not one string"
        )
    if configured:
        return [key.encode() if isinstance(key, str) else key for key in configured]
    return [derived_key(secret_key), *(derived_key(key) for key in fallbacks)]


def _fernet() -> MultiFernet:
    configured = setting("ENCRYPTION_KEYS")
    return _fernet_for(
        configured if isinstance(configured, str | bytes) else tuple(configured or ()),
        settings.SECRET_KEY,
        tuple(getattr(settings, "SECRET_KEY_FALLBACKS", None) or ()),
    )


# Deriving and parsing the keys costs more than sealing a value: done once per set of keys
# (settings changed, in tests or on rotation, make a new set).
@functools.lru_cache(maxsize=8)
def _fernet_for(configured, secret_key, fallbacks) -> MultiFernet:
    fernets = []
    for position, key in enumerate(_keys(configured, secret_key, fallbacks), start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            # Never echo the key itself.
            raise ImproperlyConfigured(
                f"CONTAINER_MANAGER['ENCRYPTION_KEYS'] entry {position} is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "cryptography.fernet.Fernet.generate_key())"
            ) from None
    return MultiFernet(fernets)


# -- sealing -----------------------------------------------------------------------------


def _undecryptable(name: str | None) -> SecretError:
    what = f"the secret value of {name}" if name else "a secret value"
    return SecretError(
        f"cannot decrypt {what}: it was sealed with a key that is not in ENCRYPTION_KEYS "
        "(nor derived from SECRET_KEY or SECRET_KEY_FALLBACKS), or it was altered"
    )


def seal(value: str, name: str | None = None) -> str:
    """``value`` encrypted with the first key, as ``cmsecret:v1:<token>``.

    An already sealed value is returned as it is, once it is known to decrypt (so a value
    that only looks sealed is refused now, naming ``name``, not at launch).
    """
    if is_sealed(value):
        unseal(value, name)
        return value
    if not isinstance(value, str):
        raise TypeError(f"a secret value must be a string, not {type(value).__name__}")
    return PREFIX + _fernet().encrypt(value.encode("utf-8")).decode("ascii")


def unseal(value: str, name: str | None = None) -> str:
    """The clear value of a sealed string (a value that is not sealed is returned as it is).

    Raises SecretError naming ``name`` when no configured key opens it or it was altered.
    """
    if not is_sealed(value):
        return value
    try:
        return _fernet().decrypt(value[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise _undecryptable(name) from None


def reseal(value: str, name: str | None = None) -> str:
    """A sealed value re-encrypted with the first key (a clear one is sealed)."""
    if not is_sealed(value):
        return seal(value, name)
    try:
        token = _fernet().rotate(value[len(PREFIX) :].encode("ascii"))
    except (InvalidToken, UnicodeError):
        raise _undecryptable(name) from None
    return PREFIX + token.decode("ascii")


# -- mappings (job overrides) -------------------------------------------------------------


def seal_environment(env):
    """``env`` with the values of secret-named variables sealed; sealed values stay as they are.

    Anything that is not a mapping of strings is returned untouched, for validation to report.
    """
    if not isinstance(env, dict):
        return env
    return {
        key: seal(value, key)
        if isinstance(key, str) and isinstance(value, str) and is_secret_key(key)
        else value
        for key, value in env.items()
    }


def sealed_value_errors(env: dict) -> list[str]:
    """A message for each sealed value in ``env`` that no configured key opens."""
    errors = []
    for key, value in env.items():
        if is_sealed(value):
            try:
                unseal(value, key)
            except SecretError as error:
                errors.append(str(error))
    return errors


def mask_environment(env: dict) -> dict:
    """``env`` with every secret value replaced by ``MASK``."""
    return {key: MASK if is_secret(key, value) else value for key, value in env.items()}


def unseal_environment(env: dict) -> dict[str, str]:
    return {key: unseal(value, key) for key, value in env.items()}


def restore_masked(new: dict, old: dict) -> tuple[dict, list[str]]:
    """``new`` (as edited on a masked form) with each ``MASK`` put back to the ``old`` value.

    Returns the mapping and the names that were masked but have no old value to keep.
    """
    restored, missing = {}, []
    for key, value in new.items():
        if value == MASK:
            if key in old:
                restored[key] = old[key]
            else:
                missing.append(key)
                restored[key] = value
        else:
            restored[key] = value
    return restored, missing


# -- KEY=value text (templates) -----------------------------------------------------------


def _split_line(line: str):
    """(head, key, value) of a ``KEY=value`` line (see ``envfile.split_line``), or None."""
    parts = split_line(line)
    return None if parts is None or parts[2] is None else parts


def _lines(text: str):
    """Each line of ``text`` as (line, line break), split where envfile splits them."""
    for raw in (text or "").splitlines(keepends=True):
        parts = raw.splitlines()
        line = parts[0] if parts else ""
        yield line, raw[len(line) :]


def env_text_items(text: str) -> list[tuple[str, str]]:
    """The (key, stored value) pairs of template text, without validating it."""
    return [parts[1:] for line, _ in _lines(text) if (parts := _split_line(line))]


def map_env_text(text: str, change) -> str:
    """``text`` with each ``KEY=value`` line's value replaced by ``change(key, value)``."""
    if not text:
        return text
    out = []
    for line, ending in _lines(text):
        parts = _split_line(line)
        if parts is not None:
            head, key, value = parts
            new = change(key, value)
            if new is not value:
                line = head + new
        out.append(line + ending)
    return "".join(out)


def seal_env_text(text: str) -> str:
    """Template text with the values of secret lines sealed; everything else kept as it is."""

    def change(key, value):
        if is_secret_key(key) and not is_sealed(value):
            return seal(value, key)
        return value

    return map_env_text(text, change)


def mask_env_text(text: str) -> str:
    """Template text with every secret value shown as ``MASK``."""
    return map_env_text(text, lambda key, value: MASK if is_secret(key, value) else value)


def restore_masked_text(new_text: str, old_text: str) -> tuple[str, list[str]]:
    """Edited (masked) text with each ``KEY=MASK`` line given back its stored value."""
    old = dict(env_text_items(old_text))
    missing = []

    def change(key, value):
        if value.strip() != MASK:
            return value
        if key in old:
            return old[key]
        missing.append(key)
        return value

    return map_env_text(new_text, change), missing


def reseal_env_text(text: str) -> tuple[str, int, list[str]]:
    """(text with every secret re-encrypted with the first key, how many, undecryptable names)."""
    count, failed = 0, []

    def change(key, value):
        nonlocal count
        if not is_secret(key, value):
            return value
        try:
            new = reseal(value, key)
        except SecretError:
            failed.append(key)
            return value
        count += 1
        return new

    return map_env_text(text, change), count, failed
