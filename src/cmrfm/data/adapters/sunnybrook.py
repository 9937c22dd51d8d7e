"""Sunnybrook Cardiac Data (Radau et al. 2009): SAX cine DICOM with manual LV contours.

Layout of the dataset root::

    sunnybrook/
        link.csv                                    patient_id,original_id (SCD0000101,SC-HF-I-1)
        dicoms/SCD0000101/N.dcm                     one cine study: 12 slices × 20 phases
        contourfiles/SC-HF-I-1/i-contours/IM-0001-NNNN-icontour-manual.txt   endocardium
        contourfiles/SC-HF-I-1/o-contours/IM-0001-NNNN-ocontour-manual.txt   epicardium

``NNNN`` is the DICOM image number (file ``48.dcm``, ``InstanceNumber`` 48). Contours are
polygons in pixel coordinates, one ``x y`` pair per line with ``x`` the column and ``y`` the row.
They are rasterised (pixel centres inside the polygon) into the internal convention: inside the
endocardium LV blood pool; between endocardium and epicardium myocardium, only on images with an
epicardial contour (images with only an endocardial contour get LV alone).

Each study is one :class:`Series` (SAX cine, ``(256, 256, 12, 20)``) with ``labels`` keyed by
frame index. A labelled frame has contours on some slices only: ``metadata["labelled_slices"]``
maps each labelled frame (as a string) to its contoured slice indices; the other slices of that
frame are unlabelled, not background. ED/ES are the labelled frames with the largest/smallest
contoured LV volume.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from cmrfm.constants import Label, Sequence, View
from cmrfm.data.adapters.base import Adapter, register_adapter
from cmrfm.data.study import ClinicalInfo, Study
from cmrfm.errors import InputError
from cmrfm.io.dicom import DicomSeriesLayout, FrameRef, load_layout, scan_dicom_folder

log = logging.getLogger(__name__)

#: Detection priority: above the generic DICOM folder adapter.
PRIORITY = 40

DICOM_DIR = "dicoms"
CONTOUR_DIR = "contourfiles"
LINK_FILE = "link.csv"
ENDO_DIR = "i-contours"
EPI_DIR = "o-contours"

_CONTOUR_RE = re.compile(r"^IM-\d+-(?P<number>\d+)-(?P<kind>[io])contour-manual\.txt$")
_CATEGORY_RE = re.compile(r"^SC-(?P<category>.+)-\d+$")

#: Fewest vertices of a usable contour polygon.
MIN_CONTOUR_POINTS = 3


def _dataset_root(path: Path) -> bool:
    return (path / DICOM_DIR).is_dir() and (path / CONTOUR_DIR).is_dir()


def read_link(root: Path) -> dict[str, str]:
    """``link.csv``: study folder name (patient_id) -> contour folder name (original_id)."""
    path = root / LINK_FILE
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as handle:
            return {row["patient_id"].strip(): row["original_id"].strip() for row in csv.DictReader(handle)}
    except (OSError, KeyError, AttributeError, csv.Error) as err:
        raise InputError(path, f"cannot read the patient_id,original_id table ({err})") from None


def read_contour(path: Path) -> np.ndarray:
    """Reads a contour file into ``(N, 2)`` pixel coordinates ``(x = column, y = row)``."""
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a list of 'x y' points ({err})") from None
    if points.shape[1] != 2 or points.shape[0] < MIN_CONTOUR_POINTS or not np.all(np.isfinite(points)):
        raise InputError(
            path, f"expected at least {MIN_CONTOUR_POINTS} 'x y' points, got shape {points.shape}"
        )
    return points


def rasterise_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a polygon.

    Args:
        points: ``(N, 2)`` vertices as ``(x = column, y = row)`` pixel coordinates.
        shape: ``(X, Y)`` = (columns, rows) of the image in cmrfm's layout.

    Returns:
        Boolean mask ``(X, Y)``: ``mask[i, j]`` is pixel column ``i``, row ``j``.
    """
    from matplotlib.path import Path as PolygonPath

    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")  # (X, Y) each
    centres = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64)  # (X*Y, 2) as (x, y)
    inside = PolygonPath(points).contains_points(centres)
    return inside.reshape(shape)


def _places(layout: DicomSeriesLayout) -> dict[tuple[int, int], FrameRef]:
    """Every image of the series by its (slice, frame) place."""
    return {(k, t): ref for k, group in enumerate(layout.grid) for t, ref in enumerate(group)}


def _place(
    number: int, study: Path, places: dict[tuple[int, int], FrameRef], contour: Path
) -> tuple[int, int]:
    """The (slice, frame) of DICOM image ``number``: file ``<number>.dcm``, checked by InstanceNumber.

    Raises:
        InputError: When no image of the series has that number.
    """
    file = (study / f"{number}.dcm").resolve()
    for place, ref in places.items():
        if ref.path.resolve() == file and ref.instance == number:
            return place
    for place, ref in places.items():  # file names renumbered: trust InstanceNumber
        if ref.instance == number:
            return place
    raise InputError(contour, f"no DICOM image numbered {number} in {study.name}")


def _contour_files(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _CONTOUR_RE.match(path.name)
            if match:
                found[int(match["number"])] = path
    return found


@register_adapter("sunnybrook", priority=PRIORITY)
class SunnybrookAdapter(Adapter):
    """The Sunnybrook Cardiac Data folder (``dicoms/``, ``contourfiles/``, ``link.csv``)."""

    @classmethod
    def is_study(cls, path: Path) -> bool:
        """A ``dicoms/<patient_id>`` folder of a Sunnybrook root."""
        return path.is_dir() and path.parent.name == DICOM_DIR and _dataset_root(path.parent.parent)

    @classmethod
    def is_root(cls, path: Path) -> bool:
        """The dataset root (or its ``dicoms`` folder) with at least one study."""
        return path.is_dir() and bool(cls.list_studies(path))

    @classmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Study folders under ``dicoms/``."""
        if root.name == DICOM_DIR and _dataset_root(root.parent):
            root = root.parent
        if not _dataset_root(root):
            return []
        return sorted(p for p in (root / DICOM_DIR).iterdir() if p.is_dir() and not p.name.startswith("."))

    @classmethod
    def load_study(cls, path: Path) -> Study:
        """Reads the cine and rasterises its contours into LV/MYO masks."""
        root = path.parent.parent
        layouts = scan_dicom_folder(path)
        layout = max(layouts, key=lambda lay: len(lay.grid) * len(lay.grid[0]))
        series = load_layout(layout)
        series.name = "sax_cine"
        series.sequence, series.view = Sequence.CINE, View.SAX
        series.metadata["sequence_source"] = series.metadata["view_source"] = "dataset"
        original = read_link(root).get(path.name)
        clinical = ClinicalInfo()
        if original is None:
            log.warning("%s: not listed in %s; no contours", path, LINK_FILE)
            return Study(path.name, [series], clinical=clinical, source=str(path), dataset=cls.name)
        match = _CATEGORY_RE.match(original)
        if match:
            clinical.extra["sunnybrook_category"] = match["category"]
        contours = root / CONTOUR_DIR / original
        endo = _contour_files(contours / ENDO_DIR)
        epi = _contour_files(contours / EPI_DIR)
        X, Y, Z, _ = series.shape
        places = _places(layout)
        labels: dict[int, np.ndarray] = {}
        labelled: dict[int, set[int]] = {}
        for number, endo_path in endo.items():
            k, t = _place(number, path, places, endo_path)
            inner = rasterise_polygon(read_contour(endo_path), (X, Y))
            plane = np.zeros((X, Y), dtype=np.uint8)
            if number in epi:
                outer = rasterise_polygon(read_contour(epi[number]), (X, Y))
                plane[outer & ~inner] = Label.MYO
            plane[inner] = Label.LV
            labels.setdefault(t, np.zeros((X, Y, Z), dtype=np.uint8))[:, :, k] = plane
            labelled.setdefault(t, set()).add(k)
        epi_only = sorted(set(epi) - set(endo))
        if epi_only:
            series.metadata["epicardium_only_images"] = epi_only  # no blood pool to anchor MYO
        series.labels = labels
        series.metadata["labelled_slices"] = {str(t): sorted(ks) for t, ks in sorted(labelled.items())}
        series.metadata["contour_source"] = original
        volumes = {t: int(np.count_nonzero(mask == Label.LV)) for t, mask in labels.items()}
        if len(volumes) >= 2:
            clinical.ed_frame = max(volumes, key=volumes.get)
            clinical.es_frame = min(volumes, key=volumes.get)
            clinical.extra["ed_es_source"] = "largest/smallest contoured LV"
        return Study(path.name, [series], clinical=clinical, source=str(path), dataset=cls.name)
