"""Data: fastMRI file checks and loaders, and the synthetic dataset generator (``synthetic``).

Kept free of heavy imports: ``import clgnet_fastmri.data`` costs nothing; import the
submodules you need (``from clgnet_fastmri.data import synthetic``).
"""
