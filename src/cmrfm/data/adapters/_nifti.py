"""Reading one NIfTI volume as a plain array for the dataset adapters (ACDC, M&Ms).

A thin layer over :func:`cmrfm.io.nifti.read_nifti`, which owns the file handling: clear
:class:`~cmrfm.errors.InputError` on missing/corrupt files, RAS+ affine with the voxel size taken
from ``pixdim`` when an sform has unit columns (ACDC), NaN checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrfm.io.nifti import read_nifti as _read_series


def read_volume(path: Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads a 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)`` NIfTI file into ``(float32 array, affine)``.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.
        ndim: The dimensionality the file must have (3 or 4).

    Raises:
        InputError: When the file is missing, corrupt, or not ``ndim``-dimensional.
    """
    series = _read_series(path, expect_ndim=ndim)
    image = series.image[..., 0] if ndim == 3 else series.image  # (X, Y, Z) or (X, Y, Z, T)
    return image, series.affine
