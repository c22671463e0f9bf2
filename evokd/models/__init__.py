"""Architectures registered by evokd (imported for their registration side effect)."""

from . import transformer_evokd  # noqa: F401
