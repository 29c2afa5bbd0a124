"""Small helpers shared by the RTL blocks: argument checks and packing of memory words."""

import operator


__all__ = ["REPLICA", "check_int", "pack_fields"]


#: Signal attribute of a register that duplicates another on purpose (a copy placed near its
#: loads, to cut a long fanout). Board builds keep such registers (Yosys merges identical
#: registers otherwise): ``Signal(..., attrs={REPLICA: 1})``.
REPLICA = "cnnforge_replica"


def check_int(name, value, minimum):
    """``value`` as an int ``>= minimum``; TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    return value


def pack_fields(values, width):
    """``values`` as one word of ``width``-bit two's complement fields, element 0 lowest."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << width) - 1)) << (k * width)
    return word
