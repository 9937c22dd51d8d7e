"""EMIDEC LGE (Lalande et al., Data 2020) as 2D PNG slices.

Layout: a root holds image folders beside their ``…annot`` twins with the same file names::

    emidec/
        train/       Case_N037_slice000.png ...   8-bit LGE slices, 256×256, resized, no spacing
        trainannot/  Case_N037_slice000.png ...   masks: 0 bg, 1 LV cavity, 2 myocardium,
                                                  3 infarct, 4 no-reflow (MVO)

One case (``Case_N…`` normal, ``Case_P…`` infarct) is one :class:`Study` with one LGE SAX
:class:`Series` of shape ``(256, 256, n_slices, 1)``.

Orientation: a PNG is read as ``png[row, column]``; the series keeps cmrfm's ``(X, Y)`` order
with **X = column and Y = row**, i.e. ``image[:, :, z, 0] = png.T``. Masks are transposed the same
way, so they always align. The files carry no geometry: the affine is the identity (1 "mm" per
pixel and per slice) and ``spacing_known`` is False.

A case has no folder of its own, so its study path is virtual: ``<image folder>/<case name>``
(e.g. ``emidec/train/Case_N037``). :meth:`EmidecAdapter.is_study` also accepts any one slice file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cmrfm.constants import Sequence, View
from cmrfm.data.adapters.base import Adapter, register_adapter
from cmrfm.data.study import ClinicalInfo, Series, Study
from cmrfm.errors import InputError
from cmrfm.io.nifti import LABEL_CONVENTIONS, map_label_ids

#: EMIDEC mask value -> internal :class:`Label` id.
EMIDEC_TO_INTERNAL: dict[int, int] = LABEL_CONVENTIONS["emidec"]

#: Suffix of the mask folder beside an image folder (``train`` -> ``trainannot``).
ANNOT_SUFFIX = "annot"
_SLICE_RE = re.compile(r"^(?P<case>Case_(?P<kind>[NP])\d+)_slice(?P<slice>\d+)\.png$", re.IGNORECASE)


def _case_of(name: str) -> str | None:
    match = _SLICE_RE.match(name)
    return match["case"] if match else None


def _cases_in(folder: Path) -> dict[str, list[Path]]:
    """Case name -> its slice files sorted by slice number, for one image folder."""
    cases: dict[str, list[tuple[int, Path]]] = {}
    if folder.is_dir() and not folder.name.endswith(ANNOT_SUFFIX):
        for path in folder.iterdir():
            match = _SLICE_RE.match(path.name)
            if match:
                cases.setdefault(match["case"], []).append((int(match["slice"]), path))
    return {case: [p for _, p in sorted(files)] for case, files in sorted(cases.items())}


def _read_png(path: Path) -> np.ndarray:
    """A grayscale PNG as ``(rows, columns)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "I", "I;16", "P"):
                img = img.convert("L")
            return np.asarray(img)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(path, f"cannot read as PNG ({err})") from None


def _stack(paths: list[Path]) -> np.ndarray:
    """Slices ``(rows, cols)`` -> ``(X, Y, Z)`` with X = column, Y = row."""
    slices = [_read_png(p) for p in paths]
    shape = slices[0].shape
    for path, arr in zip(paths, slices, strict=True):
        if arr.ndim != 2 or arr.shape != shape:
            raise InputError(path, f"slice shape {arr.shape} differs from the case's {shape}")
    return np.stack([s.T for s in slices], axis=-1)  # (X, Y, Z)


@register_adapter("emidec", priority=45)
class EmidecAdapter(Adapter):
    """EMIDEC PNG slices (``Case_[NP]NNN_sliceSSS.png``) with an ``…annot`` mask folder."""

    @classmethod
    def _resolve(cls, path: Path) -> tuple[Path, str] | None:
        """(image folder, case name) for a virtual case path or one slice file, else None."""
        path = Path(path)
        case = _case_of(path.name)
        if case is not None and path.is_file():
            return path.parent, case
        if path.parent.is_dir() and path.name in _cases_in(path.parent):
            return path.parent, path.name
        return None

    @classmethod
    def is_study(cls, path: Path) -> bool:
        """A virtual case path ``<image folder>/<case>`` or one slice PNG of a case."""
        return cls._resolve(path) is not None

    @classmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Virtual case paths in ``root`` (an image folder) or in its image sub-folders."""
        root = Path(root)
        if not root.is_dir():
            return []
        folders = [root] if _cases_in(root) else sorted(p for p in root.iterdir() if _cases_in(p))
        return [folder / case for folder in folders for case in _cases_in(folder)]

    @classmethod
    def load_study(cls, path: Path, with_labels: bool = True) -> Study:
        """Loads one case.

        Args:
            path: ``<image folder>/<case name>`` or one of the case's slice files.
            with_labels: Read the masks from the ``…annot`` twin folder.

        Raises:
            InputError: On unreadable PNGs, slice shape mismatches, missing masks or unknown
                mask values.
        """
        resolved = cls._resolve(Path(path))
        if resolved is None:
            raise InputError(path, "not an EMIDEC case (expected <folder>/Case_[NP]NNN or a slice PNG)")
        folder, case = resolved
        slice_paths = _cases_in(folder)[case]
        image = _stack(slice_paths)[..., None]  # (X, Y, Z, 1)
        labels = {}
        sources = [str(p) for p in slice_paths]
        if with_labels:
            annot = folder.with_name(folder.name + ANNOT_SUFFIX)
            mask_paths = [annot / p.name for p in slice_paths]
            missing = [p for p in mask_paths if not p.is_file()]
            if missing:
                raise InputError(
                    missing[0], "mask file missing (load with with_labels=False for images only)"
                )
            mask = _stack(mask_paths)
            if mask.shape != image.shape[:3]:
                raise InputError(annot, f"mask stack {mask.shape} differs from the image {image.shape[:3]}")
            labels[0] = map_label_ids(mask, EMIDEC_TO_INTERNAL, annot / f"{case}_slice*.png")
            sources += [str(p) for p in mask_paths]
        series = Series(
            name="sax_lge",
            image=image,
            affine=np.eye(4),
            sequence=Sequence.LGE,
            view=View.SAX,
            labels=labels,
            spacing_known=False,
            metadata={"orientation": "X = PNG column, Y = PNG row"},
            source_paths=sources,
        )
        clinical = ClinicalInfo(infarct="_P" in case.upper())
        return Study(
            study_id=case, series=[series], clinical=clinical, source=str(folder / case), dataset="emidec"
        )
