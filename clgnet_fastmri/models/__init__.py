"""CLGNet and its parts: the network (``CLGNet``), its SFL blocks and the DWT/IDWT layers."""

from .attention import RSTB, AttentionLayer, SelfAttentionBlock
from .clgnet import GLOBAL_MODULES, CLGNet, make_body
from .dwt import DWT, IDWT
from .sfl import SFL, SFRB, SFRIR, FourierUnit

__all__ = [
    "AttentionLayer",
    "CLGNet",
    "DWT",
    "FourierUnit",
    "GLOBAL_MODULES",
    "IDWT",
    "RSTB",
    "SFL",
    "SFRB",
    "SFRIR",
    "SelfAttentionBlock",
    "make_body",
]
