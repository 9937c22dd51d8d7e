"""ACDC (Bernard et al., IEEE TMI 2018): one folder per patient.

Layout of a patient folder::

    patientNNN/
        Info.cfg                      ED, ES (1-based frame numbers), Group, Height, Weight, NbFrame
        patientNNN_frameXX.nii.gz     the ED and ES frames, (X, Y, Z)
        patientNNN_frameXX_gt.nii.gz  their manual labels (ACDC: 1 RV, 2 MYO, 3 LV)
        patientNNN_4d.nii.gz          the full cine (X, Y, Z, T), not always present

Each patient becomes a :class:`Study` with one SAX cine :class:`Series`. With the 4D file the
series is the whole cine (``T = NbFrame``) labelled at frames ``ED - 1`` and ``ES - 1``; without
it the series is the ED and ES frames stacked (``T = 2``: index 0 is ED, 1 is ES) and the original
1-based frame numbers are kept in ``series.metadata["source_frames"]``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cmrfm.constants import GROUP_ALIASES, Sequence, View
from cmrfm.data.adapters._nifti import read_volume
from cmrfm.data.adapters.base import Adapter, register_adapter
from cmrfm.data.study import ClinicalInfo, Series, Study
from cmrfm.errors import InputError
from cmrfm.io.nifti import LABEL_CONVENTIONS, map_label_ids

#: ACDC label id -> internal :class:`Label` id.
ACDC_TO_INTERNAL: dict[int, int] = LABEL_CONVENTIONS["acdc"]

INFO_FILE = "Info.cfg"
_FRAME_RE = re.compile(r"^(?P<patient>.+)_frame(?P<frame>\d+)\.nii(\.gz)?$")
#: Affines of an image and its label may differ by float noise only (mm).
_AFFINE_ATOL = 1e-3


def read_info(path: Path) -> dict[str, str]:
    """Parses ``Info.cfg`` (``Key: value`` lines) into a dict of strings."""
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror})") from None
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _int_field(info: dict[str, str], key: str, path: Path) -> int:
    try:
        return int(float(info[key]))
    except KeyError:
        raise InputError(path, f"missing field {key!r}") from None
    except ValueError:
        raise InputError(path, f"field {key!r} is not a number: {info[key]!r}") from None


def _float_field(info: dict[str, str], key: str) -> float | None:
    try:
        return float(info[key])
    except (KeyError, ValueError):
        return None


def _frame_files(folder: Path) -> dict[int, Path]:
    """1-based frame number -> image file (labels excluded)."""
    frames = {}
    for path in folder.iterdir():
        match = _FRAME_RE.match(path.name)
        if match:
            frames[int(match["frame"])] = path
    return frames


def _label_path(image_path: Path) -> Path:
    name = image_path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    suffix = name[len(stem) :]
    return image_path.with_name(f"{stem}_gt{suffix}")


def _read_label(image_path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    path = _label_path(image_path)
    if not path.is_file():
        raise InputError(path, "label file missing (load with with_labels=False for images only)")
    mask, mask_affine = read_volume(path, 3)
    if mask.shape != shape:
        raise InputError(path, f"label shape {mask.shape} differs from the image's {shape}")
    if not np.allclose(mask_affine, affine, atol=_AFFINE_ATOL):
        raise InputError(path, "label affine differs from the image's affine")
    return map_label_ids(mask, ACDC_TO_INTERNAL, path)


@register_adapter("acdc", priority=50)
class AcdcAdapter(Adapter):
    """ACDC patient folders (``Info.cfg`` + ``patientNNN_frameXX.nii.gz``)."""

    @classmethod
    def is_study(cls, path: Path) -> bool:
        """A folder with ``Info.cfg`` and at least one ``*_frameXX.nii.gz``."""
        return path.is_dir() and (path / INFO_FILE).is_file() and bool(_frame_files(path))

    @classmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Patient folders directly under ``root`` (or one level deeper, e.g. ``acdc/training``)."""
        if not root.is_dir():
            return []
        found = sorted(p for p in root.iterdir() if cls.is_study(p))
        if not found:
            for sub in sorted(p for p in root.iterdir() if p.is_dir()):
                found.extend(sorted(p for p in sub.iterdir() if cls.is_study(p)))
        return found

    @classmethod
    def load_study(cls, path: Path, with_labels: bool = True) -> Study:
        """Loads one patient folder.

        Args:
            path: The patient folder.
            with_labels: Read the ``_gt`` label files (False: images only, as at analysis time).

        Raises:
            InputError: On a missing/corrupt file, a label/image geometry mismatch, a 4D cine whose
                ED/ES frames differ from the frame files, or an inconsistent ``Info.cfg``.
        """
        path = Path(path)
        info_path = path / INFO_FILE
        info = read_info(info_path)
        ed = _int_field(info, "ED", info_path)
        es = _int_field(info, "ES", info_path)
        n_frames = _int_field(info, "NbFrame", info_path) if "NbFrame" in info else None
        if ed == es:
            raise InputError(info_path, f"ED and ES are the same frame ({ed})")
        frames = _frame_files(path)
        for which, number in (("ED", ed), ("ES", es)):
            if number not in frames:
                raise InputError(path, f"no image file for the {which} frame {number:02d}")

        group_text = info.get("Group", "").strip()
        group = GROUP_ALIASES.get(group_text.upper()) if group_text else None
        if group_text and group is None:
            raise InputError(info_path, f"unknown Group {group_text!r}")

        volumes = {}
        affine = None
        for number in (ed, es):
            data, frame_affine = read_volume(frames[number], 3)
            if affine is None:
                affine = frame_affine
            elif data.shape != volumes[ed].shape or not np.allclose(frame_affine, affine, atol=_AFFINE_ATOL):
                raise InputError(frames[number], "ED and ES frames differ in shape or geometry")
            volumes[number] = data
        assert affine is not None
        labels_by_number = {}
        if with_labels:
            for number in (ed, es):
                labels_by_number[number] = _read_label(frames[number], volumes[number].shape, affine)

        four_d = next((p for p in sorted(path.glob("*_4d.nii*"))), None)
        metadata: dict[str, object] = {"source_frames": [ed, es], "frame_numbering": "1-based"}
        sources = [str(frames[ed]), str(frames[es])]
        if four_d is not None:
            image, affine_4d = read_volume(four_d, 4)
            if image.shape[:3] != volumes[ed].shape:
                raise InputError(four_d, f"4D cine shape {image.shape} does not match the frames")
            if n_frames is not None and image.shape[3] != n_frames:
                raise InputError(four_d, f"4D cine has {image.shape[3]} frames, Info.cfg says {n_frames}")
            if not np.allclose(affine_4d, affine, atol=_AFFINE_ATOL):
                raise InputError(four_d, "4D cine geometry differs from the frame files")
            for number in (ed, es):
                if not 1 <= number <= image.shape[3] or not np.array_equal(
                    image[..., number - 1], volumes[number]
                ):
                    raise InputError(four_d, f"frame {number} of the 4D cine differs from its frame file")
            index = {ed: ed - 1, es: es - 1}
            sources.insert(0, str(four_d))
            metadata["source_frames"] = list(range(1, image.shape[3] + 1))
        else:
            image = np.stack([volumes[ed], volumes[es]], axis=-1)  # (X, Y, Z, 2)
            index = {ed: 0, es: 1}
        if with_labels:
            sources += [str(_label_path(frames[n])) for n in (ed, es)]
        if n_frames is not None:
            metadata["cine_frames"] = n_frames

        series = Series(
            name="sax_cine",
            image=image,
            affine=affine,
            sequence=Sequence.CINE,
            view=View.SAX,
            labels={index[n]: labels_by_number[n] for n in labels_by_number},
            metadata=metadata,
            source_paths=sources,
        )
        clinical = ClinicalInfo(
            group=group,
            height_cm=_float_field(info, "Height"),
            weight_kg=_float_field(info, "Weight"),
            ed_frame=index[ed],
            es_frame=index[es],
        )
        return Study(study_id=path.name, series=[series], clinical=clinical, source=str(path), dataset="acdc")
