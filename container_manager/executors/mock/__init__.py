"""The mock backend: deterministic, configurable executions that run nothing (tests, demos)."""

from .executor import MockExecutor

__all__ = ["MockExecutor"]
