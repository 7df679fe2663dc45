"""Parse and format quantities with units: sizes, bandwidths, FLOP rates and times.

Configs and cluster files write `16GB`, `512MiB`, `25GB/s`, `10Gb/s`, `19.5 TFLOPS`, `10us`;
the rest of modelcut works in plain numbers (bytes, bytes/s, FLOP/s, seconds). Decimal prefixes
are powers of 1000 (GB = 1e9), binary ones powers of 1024 (GiB = 2**30). `B` is a byte and `b`
a bit (8 b = 1 B).
"""
from __future__ import annotations

import math
import re

from autodiff.errors import ModelcutError

__all__ = ["UnitError", "parse_size", "parse_bandwidth", "parse_flops", "parse_time",
           "format_size", "format_bandwidth", "format_flops", "format_time"]


class UnitError(ModelcutError, ValueError):
    """A quantity could not be parsed; the message names the text and what was expected."""


DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}
# seconds per unit as (multiplier, divisor), so that `10us` is exactly 10 / 1e6
TIME_UNITS = {"s": (1, 1), "sec": (1, 1), "ms": (1, 1e3), "us": (1, 1e6), "µs": (1, 1e6),
              "μs": (1, 1e6), "ns": (1, 1e9), "min": (60, 1), "h": (3600, 1)}

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$")
# a prefix (binary first, so `Gi` is not read as `G` + `i`), then the data unit
_DATA_UNIT = re.compile(r"^((?:[kKmMgGtTpPeE])i?)?(B|b|bytes?|bits?)$")
_RATE_SUFFIX = re.compile(r"^(.*?)(?:/s|ps)$")
_FLOPS_UNIT = re.compile(r"^([kKMGTPE]?)(?:FLOPS|FLOP/s|flops|flop/s|Flops|Flop/s)$")

# what each kind of quantity looks like, for messages
EXAMPLES = {"size": "16GB, 512MiB or 1.5e9", "bandwidth": "25GB/s, 300 GB/s, 10Gb/s or 2.5e10",
            "FLOP rate": "19.5 TFLOPS, 100GFLOP/s or 1e12", "time": "10us, 1ms, 2s or 1e-5"}


def _split(text: object, kind: str) -> tuple[float, str]:
    """Split `text` into a finite non-negative number and its unit string ('' when none)."""
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise UnitError(f"cannot read {text!r} as a {kind}: expected a number or a string "
                        f"such as {EXAMPLES[kind]}")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _NUMBER.fullmatch(text)
        if match is None:
            raise UnitError(f"cannot read {text!r} as a {kind}: expected a number followed by "
                            f"an optional unit, such as {EXAMPLES[kind]}")
        value, unit = float(match.group(1)), match.group(2)
    if not math.isfinite(value) or value < 0:
        raise UnitError(f"cannot read {text!r} as a {kind}: it must be a finite, "
                        "non-negative number")
    return value, unit


def _unit_match(pattern: re.Pattern, unit: str, text: object, kind: str, problem: str):
    """`unit` matched by `pattern` (None when there is no unit), else UnitError `problem`."""
    match = pattern.fullmatch(unit)
    if match is None and unit:
        raise UnitError(f"cannot read {text!r} as a {kind}: {problem} "
                        f"(expected e.g. {EXAMPLES[kind]})")
    return match


def _bytes_per_unit(unit: str, text: object, kind: str) -> float:
    """Bytes in one `unit` (`GB`, `GiB`, `Gb`, `kB`, `MiB` ...; '' is a byte)."""
    match = _unit_match(_DATA_UNIT, unit, text, kind, f"unknown unit {unit!r}")
    if match is None:
        return 1.0
    prefix, base = match.group(1) or "", match.group(2)
    bits = base in ("b", "bit", "bits")
    if prefix[:1] in ("m", "g", "t", "p", "e"):
        hint = (f"write {prefix.upper()}B for bytes or {prefix.upper()}b for bits" if bits
                else f"write {prefix.upper()}{base}")
        raise UnitError(f"cannot read {text!r} as a {kind}: {unit!r} is ambiguous; {hint}")
    letter = prefix[:1].upper()
    scale = BINARY[letter + "i"] if prefix.endswith("i") else DECIMAL[letter]
    return scale / 8 if bits else scale


def parse_size(text: object) -> int:
    """Bytes in a size such as `16GB`, `512MiB`, `1.5e9`, `64 kB` (a bare number is bytes)."""
    value, unit = _split(text, "size")
    return int(round(value * _bytes_per_unit(unit, text, "size")))


def parse_bandwidth(text: object) -> float:
    """Bytes per second in a rate such as `25GB/s`, `300 GB/s`, `10Gb/s` (bits), `10Gbps`."""
    value, unit = _split(text, "bandwidth")
    rate = _unit_match(_RATE_SUFFIX, unit, text, "bandwidth", f"{unit!r} is not a rate")
    return value * _bytes_per_unit(rate.group(1) if rate else "", text, "bandwidth")


def parse_flops(text: object) -> float:
    """FLOP per second in a rate such as `19.5 TFLOPS`, `100GFLOP/s` or `1e12`."""
    value, unit = _split(text, "FLOP rate")
    match = _unit_match(_FLOPS_UNIT, unit, text, "FLOP rate", f"unknown unit {unit!r}")
    return value * DECIMAL[match.group(1)] if match else value


def parse_time(text: object) -> float:
    """Seconds in a duration such as `10us`, `1ms`, `2s`, `1e-5` (a bare number is seconds)."""
    value, unit = _split(text, "time")
    if unit not in TIME_UNITS and unit != "":
        raise UnitError(f"cannot read {text!r} as a time: unknown unit {unit!r} "
                        f"(expected one of {', '.join(TIME_UNITS)}, e.g. {EXAMPLES['time']})")
    multiplier, divisor = TIME_UNITS.get(unit, (1, 1))
    return value * multiplier / divisor


def _format_decimal(value: float, unit: str) -> str:
    for prefix in ("E", "P", "T", "G", "M", "k"):
        if value >= DECIMAL[prefix]:
            return f"{value / DECIMAL[prefix]:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def format_size(nbytes: float) -> str:
    """`16000000000` -> `16 GB` (decimal prefixes; readable, not for parsing back exactly)."""
    return _format_decimal(float(nbytes), "B")


def format_bandwidth(rate: float) -> str:
    return _format_decimal(float(rate), "B/s")


def format_flops(rate: float) -> str:
    return _format_decimal(float(rate), "FLOPS")


def format_time(seconds: float) -> str:
    """`1e-5` -> `10 us`."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"
