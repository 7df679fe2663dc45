"""Value rules of the config schema (modelcut/config.py): pydantic types whose errors read
`expected ..., got ...`, quantities with units, choices with a did-you-mean suggestion."""
from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Union

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from autodiff.errors import did_you_mean as _did_you_mean
from partition.units import UnitError, parse_time


def _expected(phrase: str, detail: str = "") -> PydanticCustomError:
    return PydanticCustomError("expected", phrase + (f" ({detail})" if detail else ""))


def _rule(phrase: str, test: Callable[[Any], bool], convert: Callable = lambda v: v):
    """A BeforeValidator: `test` the raw YAML value, else fail with `expected <phrase>`."""
    def check(value):
        if not test(value):
            raise _expected(phrase)
        return convert(value)
    return BeforeValidator(check)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_number(v) -> float | None:
    """A finite number from YAML (PyYAML reads `1e-3` as a string, so numeric strings count)."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    return v if (_is_int(v) or isinstance(v, float)) and math.isfinite(v) else None


def _time(phrase: str):
    """A BeforeValidator for a positive time with units (`30s`, `2min`: partition.units)."""
    def check(value):
        try:
            number = parse_time(value)
        except UnitError as exc:
            detail = str(exc).split(": ", 1)[-1].split(" (expected")[0]
            detail = "" if detail.startswith("expected") else detail
            raise _expected(phrase, detail=detail) from None
        if number <= 0:
            raise _expected(phrase)
        return number
    return BeforeValidator(check)


def _choice(*options: str):
    """A string that must be one of `options` (with a did-you-mean hint)."""
    def check(value):
        if value in options:
            return value
        raise PydanticCustomError("expected", f"expected one of {', '.join(options)}"
                                  f"{_did_you_mean(value, options)}")
    return Annotated[str, BeforeValidator(check)]


# Every count is at most INT_MAX (model sizes have tighter caps in modelcut/config.py); seeds
# are what numpy's legacy RandomState accepts.
INT_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1


def Bounded(low: int, high: int, what: str):
    """An integer in low..high (bools rejected), else `expected <what>` (`... at most HIGH`)."""
    def check(value):
        if not (_is_int(value) and value >= low):
            raise _expected(f"expected {what}")
        if value > high:
            raise _expected(f"expected {what} at most {high:,}")
        return value
    return Annotated[int, BeforeValidator(check)]


PositiveInt = Bounded(1, INT_MAX, "a positive integer")
NonNegativeInt = Bounded(0, INT_MAX, "a non-negative integer")
Seed = Bounded(0, SEED_MAX, "a seed in 0..2^32-1")
PositiveNumber = Annotated[float, _rule("expected a positive number",
                                        lambda v: (_as_number(v) or 0) > 0, _as_number)]
NonNegativeNumber = Annotated[float, _rule("expected a non-negative number",
                                           lambda v: _as_number(v) is not None
                                           and _as_number(v) >= 0, _as_number)]
Fraction = Annotated[float, _rule("expected a number in [0, 1)",
                                  lambda v: _as_number(v) is not None and 0 <= _as_number(v) < 1,
                                  _as_number)]
Flag = Annotated[bool, _rule("expected true or false", lambda v: isinstance(v, bool))]
Text = Annotated[str, _rule("expected a non-empty string", lambda v: isinstance(v, str) and v)]
Seconds = Annotated[float, _time("expected a positive time such as 30s or 2min")]
Dtype = _choice("float32", "float64")
PinTarget = Annotated[Union[int, str], _rule("expected a device name or a device index",
                                             lambda v: (_is_int(v) and v >= 0)
                                             or (isinstance(v, str) and v))]
Betas = Annotated[tuple[float, float], _rule(
    "expected a list of two numbers in [0, 1)",
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2
    and all(_as_number(b) is not None and 0 <= _as_number(b) < 1 for b in v),
    lambda v: tuple(_as_number(b) for b in v))]
