"""Model fields that turn hostile values into validation errors instead of crashes.

Django's own fields let two kinds of input escape as exceptions rather than field errors:
JSON nested deeply enough to exhaust the recursion limit (RecursionError while encoding or
decoding), and numbers too large for an integer (OverflowError for infinity). These
subclasses check first and answer with a ValidationError that names the problem.
"""

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

MAX_JSON_DEPTH = 32


def json_depth_error(value, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` is nested too deeply, or None. Iterative, so it cannot recurse away."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return f"is nested more than {limit} levels deep"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


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


class BoundedJSONField(models.JSONField):
    """A JSONField that refuses values nested more than MAX_JSON_DEPTH levels."""

    def validate(self, value, model_instance):
        problem = json_depth_error(value)
        if problem:
            raise ValidationError(problem, code="invalid")
        super().validate(value, model_instance)

    def formfield(self, **kwargs):
        return super().formfield(**{"form_class": JSONFormField, **kwargs})


class FiniteIntegerMixin:
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
