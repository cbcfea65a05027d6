"""CLGNet and its parts: the network (``CLGNet``), its SFL blocks, the DWT/IDWT layers, and
the paper's formulas as plain reference modules (``Reference*``, same state dicts)."""

from .attention import RSTB, AttentionLayer, SelfAttentionBlock
from .clgnet import GLOBAL_MODULES, Branch, CLGNet, make_body
from .dwt import DWT, IDWT
from .reference import (
    ReferenceBranch,
    ReferenceCLGNet,
    ReferenceFourierUnit,
    ReferenceSFL,
    ReferenceSFRB,
    ReferenceSFRIR,
)
from .sfl import SFL, SFRB, SFRIR, FourierUnit

__all__ = [
    "AttentionLayer",
    "Branch",
    "CLGNet",
    "DWT",
    "FourierUnit",
    "GLOBAL_MODULES",
    "IDWT",
    "RSTB",
    "ReferenceBranch",
    "ReferenceCLGNet",
    "ReferenceFourierUnit",
    "ReferenceSFL",
    "ReferenceSFRB",
    "ReferenceSFRIR",
    "SFL",
    "SFRB",
    "SFRIR",
    "SelfAttentionBlock",
    "make_body",
]
