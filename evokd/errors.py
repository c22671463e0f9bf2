"""User-facing errors: bad input detected before any long work starts."""

import math


class EvokdError(ValueError):
    """Bad input (a file, a flag, a plan): the message names it and what was expected."""


def check_number(value, flag, minimum, kind=int):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and float(value).is_integer()
    if value is not None and not (ok and value >= minimum):
        what = "a whole number" if kind is int else "a number"
        raise EvokdError(f"{flag} {value}: expected {what} >= {minimum}")
