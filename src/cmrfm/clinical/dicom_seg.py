"""DICOM Segmentation objects (highdicom) for masks predicted on a DICOM series.

The SEG references the source images of the frames it covers (for a cine, ED and ES), one binary
segment per structure, in the source images' own pixel grid. Patient attributes copied from the
source (name, ID, birth date, accession number) are replaced by an opaque study key unless
``keep_identifiers`` is set, so a SEG written by default carries no identifier; UIDs are kept so
a PACS can still attach it to the study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrfm import __version__
from cmrfm.constants import Label
from cmrfm.data.study import Series
from cmrfm.errors import InputError

#: Series number given to SEG objects written by cmrfm.
SEG_SERIES_NUMBER = 9000
#: Patient attributes blanked (or replaced) when identifiers are not kept.
IDENTIFYING_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "InstitutionName",
)

#: Patient/study attributes a SEG copies from its source (added empty when a source lacks them).
REQUIRED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


def _segment_codes() -> dict[int, tuple[str, object, object]]:
    """Label id -> (segment label, property category code, property type code)."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    anatomy = codes.SCT.AnatomicalStructure
    abnormal = codes.SCT.MorphologicallyAbnormalStructure
    return {
        Label.LV: ("LV blood pool", anatomy, codes.SCT.LeftVentricle),
        Label.MYO: ("LV myocardium", anatomy, codes.SCT.LeftVentricleMyocardium),
        Label.RV: ("RV blood pool", anatomy, codes.SCT.RightVentricle),
        Label.INFARCT: ("Infarct", abnormal, codes.SCT.MyocardialInfarction),
        Label.MVO: ("MVO", abnormal, CodedConcept("MVO", "99CMRFM", "Microvascular obstruction")),
        Label.LA: ("LA", anatomy, codes.SCT.LeftAtrium),
        Label.RA: ("RA", anatomy, codes.SCT.RightAtrium),
    }


def find_layout(source: str | Path, series_name: str):
    """The DICOM layout (file of every slice and frame) of the series called ``series_name``."""
    from cmrfm.io.dicom import merge_single_slice_series, scan_dicom_folder

    layouts = merge_single_slice_series(scan_dicom_folder(source))
    for layout in layouts:
        if layout.name == series_name:
            return layout
    raise InputError(source, f"series {series_name} not found again when writing its DICOM SEG")


def write_dicom_seg(
    series: Series,
    labels: np.ndarray,
    frames: list[int],
    source: str | Path,
    path: str | Path,
    study_key: str,
    keep_identifiers: bool = False,
) -> Path:
    """Writes a DICOM SEG of ``labels`` at ``frames`` of a series read from the DICOM folder ``source``.

    Args:
        series: The analysed series (its name finds its files again).
        labels: ``(X, Y, Z, T)`` internal labels on the series' grid.
        frames: Frame indices to include (e.g. ED and ES).
        source: The DICOM study folder (or file) the series was read from.
        path: Output ``.dcm`` file.
        study_key: Opaque key written as PatientID when identifiers are removed.
        keep_identifiers: Keep the source's patient attributes.

    Returns:
        The path written.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    layout = find_layout(source, series.name)
    refs = [(k, t, layout.grid[k][t]) for t in frames for k in range(len(layout.grid))]
    if all(ref.frame is None for _, _, ref in refs):
        sources = [pydicom.dcmread(ref.path) for _, _, ref in refs]
        pixel = np.stack([labels[:, :, k, t].T for k, t, _ in refs]).astype(np.uint8)  # (N, rows, cols)
    elif len({ref.path for _, _, ref in refs}) == 1:
        ds = pydicom.dcmread(refs[0][2].path)
        sources = [ds]
        pixel = np.zeros((int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)), np.uint8)
        for k, t, ref in refs:
            pixel[ref.frame] = labels[:, :, k, t].T
    else:
        raise InputError(source, "series spread over several multi-frame files: DICOM SEG not written")
    for ds in sources:  # type-2 attributes highdicom copies; real files sometimes lack them
        for keyword in REQUIRED_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    codes_by_label = _segment_codes()
    present = [int(v) for v in np.unique(pixel) if v in codes_by_label]
    if not present:
        raise InputError(source, f"nothing segmented in {series.name}: no DICOM SEG written")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cmrfm", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    label_map = np.zeros_like(pixel)
    for number, label in enumerate(present, start=1):
        name, category, prop = codes_by_label[label]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
        label_map[pixel == label] = number
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cmrfm",
        manufacturer_model_name="cmrfm analyze",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"cmrfm segmentation of {series.name}",
    )
    if not keep_identifiers:
        for keyword in IDENTIFYING_ATTRIBUTES:
            if keyword in seg:
                setattr(seg, keyword, "")
        seg.PatientName = "ANONYMOUS"
        seg.PatientID = study_key
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


__all__ = ["find_layout", "write_dicom_seg"]
