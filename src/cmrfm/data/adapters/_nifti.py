"""Minimal NIfTI reading shared by the dataset adapters (ACDC, M&Ms).

The general NIfTI reader lives in :mod:`cmrfm.io.nifti`; this helper only reads one volume with
the fix the public cardiac datasets need: ACDC (and some M&Ms exports) store an ``sform`` whose
columns are unit vectors while the true voxel size sits in ``pixdim``. When the affine's column
lengths disagree with ``pixdim`` the directions are kept and rescaled to ``pixdim``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrfm.errors import InputError

#: Relative disagreement between affine column norms and pixdim that triggers the rescale.
_SPACING_RTOL = 1e-3


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a NIfTI file into ``(array, affine)`` with the voxel size taken from ``pixdim``.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.

    Returns:
        The array in the file's voxel order (``(X, Y, Z[, T])``) and its 4×4 RAS+ affine in mm.

    Raises:
        InputError: When the file is missing, truncated or not NIfTI.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as err:  # nibabel, gzip and zlib raise many types on corrupt files
        raise InputError(path, f"cannot read as NIfTI ({type(err).__name__}: {err})") from None
    if array.ndim < 3:
        raise InputError(path, f"expected a 3D or 4D volume, got shape {array.shape}")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.all(zooms > 0) and np.all(norms > 0) and not np.allclose(norms, zooms, rtol=_SPACING_RTOL):
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] / norms[None, :] * zooms[None, :]
    return array, affine
