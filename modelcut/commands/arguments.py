"""argparse `type=` checkers for numeric flags: a bad value is a one-line argparse error
(`modelcut: error: partition: argument --epsilon: expected ...`), never a traceback later."""
from __future__ import annotations

import argparse
import math

from partition.cluster_spec import MAX_DEVICES   # the most devices a cluster may have


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def int_in(low: int, high: int):
    """A checker for an integer in low..high."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high:,}, "
                                             f"got {text}")
        return value
    return check


device_count = int_in(1, MAX_DEVICES)
node_count = int_in(0, 2**31 - 1)
