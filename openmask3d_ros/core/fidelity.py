"""The fidelity mode: which OpenMask3D the pipeline reproduces (config key ``fidelity``, see
docs/fidelity.md).

``Fidelity.OFFICIAL`` (the default) follows the released code, ``Fidelity.PAPER`` the paper's
text. A ``str`` enum: a member equals and prints as its plain name, so YAML files, ROS
parameters and meta.json keep writing and reading ``"official"`` / ``"paper"``.
"""
from __future__ import annotations

from enum import Enum


class Fidelity(str, Enum):
    OFFICIAL = "official"
    PAPER = "paper"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Fidelity) -> Fidelity:
        """The mode named ``value``; ValueError naming ``fidelity`` and the modes otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"fidelity must be one of {', '.join(FIDELITY_MODES)}, "
                             f"got {value!r}") from None


FIDELITY_MODES = tuple(mode.value for mode in Fidelity)
