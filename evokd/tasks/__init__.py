"""Tasks registered by evokd (imported for their registration side effect)."""

from . import evokd_translation  # noqa: F401
