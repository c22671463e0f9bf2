"""User-facing errors: bad input detected before any long work starts."""


class EvokdError(ValueError):
    """Bad input (a file, a flag, a plan): the message names it and what was expected."""
