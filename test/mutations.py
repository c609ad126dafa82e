"""Hypothesis strategy shared by the property-based tests of the readers (test/) and of the
message conversions (test/ros/): a valid payload damaged the way files and messages get damaged."""
from hypothesis import strategies as st


@st.composite
def mutated(draw, original: bytes, header_bytes: int = 0) -> bytes:
    """``original`` with 1-4 edits: cut short, a byte flipped, bytes inserted or deleted, and with
    ``header_bytes`` > 0 one of the first ``header_bytes`` bytes overwritten (the sizes and
    parameters that image headers keep there)."""
    data = bytearray(original)
    kinds = ["truncate", "flip", "insert", "delete"] + (["header"] if header_bytes else [])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[pos:]
        elif kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "header" and len(data) >= header_bytes:
            data[draw(st.integers(0, header_bytes - 1))] = draw(st.integers(0, 255))
    return bytes(data)
