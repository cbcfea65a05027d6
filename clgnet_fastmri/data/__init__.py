"""Data: the fastMRI layout (``fastmri_layout``: names, limits, the one writer of its files),
file checks and loaders, the synthetic dataset generator (``synthetic``) and the converter of
real data (``convert``, one module per source format).

Kept free of heavy imports: ``import clgnet_fastmri.data`` costs nothing; import the
submodules you need (``from clgnet_fastmri.data import synthetic``).
"""
