"""M&Ms (Campello et al., IEEE TMI 2021) and M&Ms-2 (Martín-Isla et al., 2023) cine SAX studies.

M&Ms layout (one folder per subject, external code e.g. ``A0S9V9``)::

    <root>/<Training|Validation|Testing>/<Labeled|Unlabeled>/<code>/<code>_sa.nii.gz     (X, Y, Z, T)
                                                                  /<code>_sa_gt.nii.gz  (X, Y, Z, T)
    <root>/201014_M&Ms_Dataset_Information_-_opendataset.csv   External code, VendorName, Vendor,
                                                                Centre, ED, ES, [Pathology, ...]

The 4D ground truth is non-zero only at the ED and ES frames. ``ED``/``ES`` in the CSV are 0-based
frame indices (they index those non-empty frames); without a CSV entry they are taken from the
non-empty label frames (ED = the one with the larger LV).

M&Ms-2 layout: ``<root>/dataset/<code>/<code>_SA_CINE.nii.gz`` with ``<code>_SA_ED.nii.gz``,
``<code>_SA_ES.nii.gz`` and their ``_gt`` files, and ``dataset_information.csv`` (SUBJECT_CODE,
DISEASE, VENDOR, ...). The ED/ES frames are located in the cine as the frames equal to (or, after
re-encoding, closest to) the ED/ES files. Long-axis files are not read here.

Labels 1 LV, 2 MYO, 3 RV equal the internal ids; the mapping is still explicit.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cmrfm.constants import GROUP_ALIASES, Label, Sequence, View
from cmrfm.data.adapters._nifti import read_volume
from cmrfm.data.adapters.base import Adapter, register_adapter
from cmrfm.data.study import ClinicalInfo, Series, Study
from cmrfm.errors import InputError
from cmrfm.io.nifti import LABEL_CONVENTIONS, map_label_ids

#: M&Ms label id -> internal :class:`Label` id.
MNMS_TO_INTERNAL: dict[int, int] = LABEL_CONVENTIONS["mnms"]

#: CSV columns (M&Ms first, M&Ms-2 second) for each field we read.
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "code": ("External code", "SUBJECT_CODE"),
    "vendor": ("VendorName", "VENDOR"),
    "vendor_code": ("Vendor",),
    "centre": ("Centre", "CENTRE"),
    "ed": ("ED",),
    "es": ("ES",),
    "pathology": ("Pathology", "DISEASE"),
    "height": ("Height",),
    "weight": ("Weight",),
    "scanner": ("SCANNER",),
    "field_strength": ("FIELD",),
}
#: How many folders above a study to look for the dataset CSV.
_CSV_SEARCH_DEPTH = 4
_AFFINE_ATOL = 1e-3


def _nii(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _layout(folder: Path) -> str | None:
    """``"mnms"``, ``"mnms2"`` or None for a subject folder."""
    if not folder.is_dir():
        return None
    if _nii(folder, f"{folder.name}_sa"):
        return "mnms"
    if _nii(folder, f"{folder.name}_SA_CINE"):
        return "mnms2"
    return None


def _read_csv_rows(path: Path) -> dict[str, dict[str, str]]:
    """Subject code -> row (field name -> text) of an M&Ms or M&Ms-2 information CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            columns = {
                field: next((c for c in names if c in header), None) for field, names in CSV_COLUMNS.items()
            }
            if columns["code"] is None:
                return {}
            rows = {}
            for raw in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                fields = {f: row.get(c, "") for f, c in columns.items() if c is not None}
                if fields["code"]:
                    rows[fields["code"]] = fields
            return rows
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the dataset information CSV ({err})") from None


def find_info_row(study: Path) -> tuple[dict[str, str] | None, Path | None]:
    """Looks for the subject's row in a dataset CSV in the study's folder or up to 4 levels above."""
    folder = study
    for _ in range(_CSV_SEARCH_DEPTH + 1):
        for path in sorted(folder.glob("*.csv")):
            rows = _read_csv_rows(path)
            if study.name in rows:
                return rows[study.name], path
        if folder.parent == folder:
            break
        folder = folder.parent
    return None, None


def _optional_int(text: str | None, path: Path | None, field: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(float(text))
    except ValueError:
        raise InputError(path, f"{field} is not a frame index: {text!r}") from None


def _optional_float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _ed_es_from_labels(gt: np.ndarray, path: Path) -> tuple[int, int]:
    """(ED, ES) from a 4D label volume: its two non-empty frames, ED = larger LV."""
    filled = [t for t in range(gt.shape[3]) if np.any(gt[..., t])]
    if len(filled) != 2:
        raise InputError(path, f"expected labels at exactly 2 frames (ED, ES), found {len(filled)}")
    lv = [int(np.count_nonzero(gt[..., t] == Label.LV)) for t in filled]
    return (filled[0], filled[1]) if lv[0] >= lv[1] else (filled[1], filled[0])


def _closest_frame(cine: np.ndarray, frame: np.ndarray) -> int:
    """Index of the cine frame equal (or closest in mean squared difference) to ``frame``."""
    diffs = [float(np.mean((cine[..., t].astype(np.float64) - frame) ** 2)) for t in range(cine.shape[3])]
    return int(np.argmin(diffs))


@register_adapter("mnms", priority=45)
class MnmsAdapter(Adapter):
    """M&Ms / M&Ms-2 subject folders (``<code>/<code>_sa.nii.gz`` or ``<code>_SA_CINE.nii.gz``)."""

    @classmethod
    def is_study(cls, path: Path) -> bool:
        """A subject folder holding ``<code>_sa.nii.gz`` or ``<code>_SA_CINE.nii.gz``."""
        return _layout(Path(path)) is not None

    @classmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Subject folders anywhere under ``root`` (M&Ms nests them three levels deep)."""
        root = Path(root)
        if not root.is_dir():
            return []
        found = {p.parent for p in root.rglob("*_sa.nii*") if p.parent.name + "_sa" in p.name}
        found |= {p.parent for p in root.rglob("*_SA_CINE.nii*")}
        return sorted(p for p in found if cls.is_study(p))

    @classmethod
    def load_study(cls, path: Path, with_labels: bool = True) -> Study:
        """Loads one subject's SAX cine (and its ED/ES labels when ``with_labels``).

        Raises:
            InputError: On corrupt files, geometry mismatches, or ED/ES in the CSV that disagree
                with the labelled frames.
        """
        path = Path(path)
        layout = _layout(path)
        if layout is None:
            raise InputError(path, "not an M&Ms subject folder (no <code>_sa.nii.gz)")
        row, csv_path = find_info_row(path)
        row = row or {}
        if layout == "mnms":
            image, affine, labels, ed, es, sources = cls._load_mnms(path, row, csv_path, with_labels)
        else:
            image, affine, labels, ed, es, sources = cls._load_mnms2(path, with_labels)

        metadata: dict[str, object] = {}
        for field in ("vendor", "vendor_code", "centre", "scanner"):
            if row.get(field):
                metadata[field] = row[field]
        strength = _optional_float(row.get("field_strength"))
        if strength is not None:
            metadata["field_strength_t"] = strength
        series = Series(
            name="sax_cine",
            image=image,
            affine=affine,
            sequence=Sequence.CINE,
            view=View.SAX,
            labels=labels,
            metadata=metadata,
            source_paths=sources,
        )
        pathology = row.get("pathology", "").strip().upper()
        extra = {"pathology": pathology} if pathology and pathology not in GROUP_ALIASES else {}
        clinical = ClinicalInfo(
            group=GROUP_ALIASES.get(pathology),
            height_cm=_optional_float(row.get("height")),
            weight_kg=_optional_float(row.get("weight")),
            ed_frame=ed,
            es_frame=es,
            extra=extra,
        )
        return Study(study_id=path.name, series=[series], clinical=clinical, source=str(path), dataset="mnms")

    @classmethod
    def _load_mnms(
        cls, path: Path, row: dict[str, str], csv_path: Path | None, with_labels: bool
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], int | None, int | None, list[str]]:
        image_path = _nii(path, f"{path.name}_sa")
        assert image_path is not None
        image, affine = read_volume(image_path, 4)
        ed = _optional_int(row.get("ed"), csv_path, "ED")
        es = _optional_int(row.get("es"), csv_path, "ES")
        for name, value in (("ED", ed), ("ES", es)):
            if value is not None and not 0 <= value < image.shape[3]:
                raise InputError(csv_path, f"{name} frame {value} outside the cine's 0..{image.shape[3] - 1}")
        sources = [str(image_path)]
        gt_path = _nii(path, f"{path.name}_sa_gt")
        labels: dict[int, np.ndarray] = {}
        gt = None
        if gt_path is not None and (with_labels or ed is None or es is None):
            gt, gt_affine = read_volume(gt_path, 4)
            if gt.shape != image.shape:
                raise InputError(gt_path, f"label shape {gt.shape} differs from the image's {image.shape}")
            if not np.allclose(gt_affine, affine, atol=_AFFINE_ATOL):
                raise InputError(gt_path, "label affine differs from the image's affine")
            gt = map_label_ids(gt, MNMS_TO_INTERNAL, gt_path)
        if gt is not None:
            if ed is None or es is None:
                ed, es = _ed_es_from_labels(gt, gt_path)
            elif with_labels and not (np.any(gt[..., ed]) and np.any(gt[..., es])):
                raise InputError(gt_path, f"the CSV's ED {ed} / ES {es} frames carry no labels")
            if with_labels:
                labels = {ed: gt[..., ed], es: gt[..., es]}
                sources.append(str(gt_path))
        return image, affine, labels, ed, es, sources

    @classmethod
    def _load_mnms2(
        cls, path: Path, with_labels: bool
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], int | None, int | None, list[str]]:
        cine_path = _nii(path, f"{path.name}_SA_CINE")
        assert cine_path is not None
        image, affine = read_volume(cine_path, 4)
        sources = [str(cine_path)]
        found: dict[str, int] = {}
        labels: dict[int, np.ndarray] = {}
        for phase in ("ED", "ES"):
            frame_path = _nii(path, f"{path.name}_SA_{phase}")
            if frame_path is None:
                continue
            frame, _ = read_volume(frame_path, 3)
            if frame.shape != image.shape[:3]:
                raise InputError(frame_path, f"shape {frame.shape} differs from the cine's {image.shape[:3]}")
            found[phase] = _closest_frame(image, frame)
            gt_path = _nii(path, f"{path.name}_SA_{phase}_gt")
            if with_labels and gt_path is not None:
                gt, gt_affine = read_volume(gt_path, 3)
                if gt.shape != frame.shape or not np.allclose(gt_affine, affine, atol=_AFFINE_ATOL):
                    raise InputError(gt_path, "label geometry differs from the cine's")
                labels[found[phase]] = map_label_ids(gt, MNMS_TO_INTERNAL, gt_path)
                sources.append(str(gt_path))
        return image, affine, labels, found.get("ED"), found.get("ES"), sources
