"""napari-rrl-medsam: one-shot 3D medical image segmentation guided by SAM (RRL-MedSAM).

Importing the package is cheap on purpose (napari imports every plugin at start-up):
torch, napari and Qt are only imported by the modules that need them.
Scripts use :mod:`napari_rrl_medsam.api`.
"""

__version__ = "0.1.0.dev0"
