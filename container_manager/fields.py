"""Model fields that turn hostile values into validation errors instead of crashes.

Django's own fields let some input escape as exceptions rather than field errors: JSON nested
deeply enough to exhaust the recursion limit (RecursionError while encoding, decoding or
repr()-ing it), numbers too large for an integer (OverflowError for infinity), and NUL bytes,
which SQLite stores but PostgreSQL refuses in text and jsonb (a DataError on save). These
fields and helpers check first and answer with a ValidationError that names the problem.
"""

import reprlib
from typing import TYPE_CHECKING

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

MAX_JSON_DEPTH = 32
NUL_MESSAGE = "cannot contain NUL bytes (\\x00)"


def _walk(value):
    """Each value inside ``value`` (dict keys included) with its depth, ``value`` being 1.

    Iterative, so a value nested any depth cannot exhaust the stack.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        if isinstance(item, dict):
            stack.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)


def json_depth_error(value, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` is nested too deeply, or None. A cyclic value counts as too deep."""
    for item, depth in _walk(value):
        if depth > limit and isinstance(item, dict | list | tuple):
            return f"is nested more than {limit} levels deep"
    return None


def json_nul_error(value) -> str | None:
    """NUL_MESSAGE if a string in ``value`` (a key or a value) holds a NUL, else None.

    Walks everything: call it on a value that json_depth_error has passed (no cycle).
    """
    if any(isinstance(item, str) and "\x00" in item for item, _ in _walk(value)):
        return NUL_MESSAGE
    return None


class _ShortRepr(reprlib.Repr):
    def __init__(self):
        super().__init__()
        # reprlib recurses only this deep, and shows this much of each level.
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 5
        self.maxstring = self.maxother = self.maxlong = 60


_short_repr = _ShortRepr()


def short_repr(value, limit: int = 200) -> str:
    """repr() for messages, bounded in depth and length: a user's value can be megabytes or
    nested thousands of levels deep, and repr() would copy all of it or recurse away."""
    try:
        text = _short_repr.repr(value)
    except ValueError:  # an int too long to convert to text (sys.set_int_max_str_digits)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JSONFormField(forms.JSONField):
    def to_python(self, value):
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(
                f"is nested more than {MAX_JSON_DEPTH} levels deep", code="invalid"
            ) from None

    def bound_data(self, data, initial):
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)

    def has_changed(self, initial, data):
        try:
            return super().has_changed(initial, data)
        except RecursionError:
            return True

    def prepare_value(self, value):
        # A stored value too deep to save again (written around validation) is not encoded,
        # which could recurse away; the box says why, and must be replaced to save the form.
        if problem := json_depth_error(value):
            return forms.fields.InvalidJSONInput(f"(not shown: {problem})")
        return super().prepare_value(value)


class BoundedJSONField(models.JSONField):
    """A JSONField that refuses values nested more than MAX_JSON_DEPTH levels, or holding NUL."""

    def validate(self, value, model_instance):
        # Not code "invalid": a ModelForm would show its own "Enter a valid JSON." instead.
        if problem := json_depth_error(value):
            raise ValidationError(problem, code="too_deep")
        if problem := json_nul_error(value):  # only now: a value too deep may be cyclic
            raise ValidationError(problem, code="null_characters_not_allowed")
        super().validate(value, model_instance)

    def formfield(self, form_class=None, choices_form_class=None, **kwargs):
        return super().formfield(
            form_class=form_class or JSONFormField, choices_form_class=choices_form_class, **kwargs
        )


# For the type checker, the mixin is what it is mixed into: its super() is an integer field's.
if TYPE_CHECKING:
    _IntegerFieldBase = models.IntegerField
else:
    _IntegerFieldBase = object


class FiniteIntegerMixin(_IntegerFieldBase):
    def to_python(self, value):
        try:
            return super().to_python(value)
        except OverflowError:
            raise ValidationError(f"“{value}” is not a whole number", code="invalid") from None


class IntegerField(FiniteIntegerMixin, models.IntegerField):
    pass


class PositiveIntegerField(FiniteIntegerMixin, models.PositiveIntegerField):
    pass


NUMERIC_FIELDS = (models.IntegerField, models.FloatField, models.DecimalField)


def empty_number_errors(instance) -> dict[str, str]:
    """Errors for optional numbers given as [], {} or () instead of a number or None.

    Django skips the validation of a blank field holding any "empty" value, so such a value
    would only fail when saved. An empty string means "not set", as it does in forms.
    """
    errors = {}
    for field in instance._meta.concrete_fields:
        value = getattr(instance, field.attname)
        if not isinstance(field, NUMERIC_FIELDS) or value is None:
            continue
        if isinstance(value, str) and value == "" and field.null:
            setattr(instance, field.attname, None)
        elif isinstance(value, list | dict | tuple | set) and not value:
            errors[field.name] = f"must be a number, not {value!r}"
    return errors


TEXT_FIELDS = (models.CharField, models.TextField)


def nul_errors(instance, exclude=()) -> dict[str, str]:
    """NUL_MESSAGE for each text field of ``instance`` holding a NUL (JSON fields check their
    own, in BoundedJSONField.validate). A model field validator would need a migration."""
    return {
        field.name: NUL_MESSAGE
        for field in instance._meta.concrete_fields
        if isinstance(field, TEXT_FIELDS)
        and field.name not in exclude
        and isinstance(value := getattr(instance, field.attname), str)
        and "\x00" in value
    }


def clean_fields(instance, exclude, django_clean_fields) -> None:
    """``django_clean_fields(exclude)`` (Django's Model.clean_fields) with the errors it
    cannot see added: optional numbers given as empty containers, and NUL in text.

    Every model that takes user input calls this from its own ``clean_fields``: a field in
    error is left out of the unique checks, so no query ever carries a NUL to PostgreSQL.
    """
    exclude = exclude or ()
    found = {**empty_number_errors(instance), **nul_errors(instance, exclude)}
    errors = {name: [ValidationError(message)] for name, message in found.items()}
    try:
        django_clean_fields(exclude)
    except ValidationError as error:
        errors = error.update_error_dict(errors)
    if errors:
        raise ValidationError(errors)


class CheckedModel(models.Model):
    """A model that takes user input: its ``clean_fields`` reports what Django's cannot
    (see ``clean_fields`` above)."""

    class Meta:
        abstract = True

    def clean_fields(self, exclude=None):
        clean_fields(self, exclude, super().clean_fields)
