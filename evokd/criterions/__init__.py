"""Criterions registered by evokd (imported for their registration side effect)."""

from . import word_kd  # noqa: F401
