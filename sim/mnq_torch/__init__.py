"""PyTorch side of mnq: its Integer-mode units and integer forward, bit-exact, with
straight-through gradients for quantisation-aware training (see README.md beside this file
and `sim/README.md`)."""

from .fixed import RangeError  # noqa: F401
from .model import MnqModel, ModelDirError  # noqa: F401
from .ste import UnitModule  # noqa: F401
from .units import build as build_unit  # noqa: F401
