"""CLGNet for fastMRI: the reference implementation of CLGNet as a plugin for ``fastmri``.

Paper: Q. Yi, J. Liu, L. Hu, F. Fang, G. Zhang. "Contrastive Learning for Local and Global
Learning MRI Reconstruction" (CLGNet).
"""

__version__ = "0.1.0"
