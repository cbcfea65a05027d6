"""CLGNet and its parts: the network (``CLGNet``), its SFL blocks and the DWT/IDWT layers."""

from .clgnet import GLOBAL_MODULES, CLGNet, make_body
from .dwt import DWT, IDWT
from .sfl import SFL, SFRB, SFRIR, FourierUnit

__all__ = [
    "CLGNet",
    "DWT",
    "FourierUnit",
    "GLOBAL_MODULES",
    "IDWT",
    "SFL",
    "SFRB",
    "SFRIR",
    "make_body",
]
