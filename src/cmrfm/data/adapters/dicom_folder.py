"""Any DICOM folder: one study (series found recursively), or a root whose sub-folders are studies.

A folder is one study when DICOM images sit directly in it, or when every DICOM sub-folder is
readable and all share one StudyInstanceUID (one header sampled per folder). A folder whose sub-folders are
such studies is a root. A layout that a more specific adapter (higher priority) recognises as a
root of its own, such as the Sunnybrook dataset folder, is left to that adapter.
"""

from __future__ import annotations

from pathlib import Path

from cmrfm.data.adapters.base import ADAPTERS, Adapter, register_adapter
from cmrfm.data.study import Study
from cmrfm.io.dicom import has_dicom_preamble, iter_files, read_dicom_study, sample_study_uids

#: Detection priority: below dataset-specific adapters (ACDC ~50, Sunnybrook 40), above plain NIfTI.
PRIORITY = 20

#: File suffixes taken as DICOM without opening the file.
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}

#: Files looked at when deciding whether a folder holds anything DICOM-like.
MAX_FILES_PROBED = 200


def claimed_as_root_by_higher_priority(adapter: type[Adapter], path: Path) -> bool:
    """True when an adapter of higher priority than ``adapter`` sees ``path`` as a root of studies.

    Generic layouts (a DICOM or NIfTI folder) call this so that a dataset root (Sunnybrook,
    ACDC) is not mistaken for one big generic study.
    """
    for name in ADAPTERS.names():
        other = ADAPTERS.get(name)
        if other.priority > adapter.priority and other.is_root(path):
            return True
    return False


def _looks_dicom(folder: Path) -> bool:
    """Whether any of the first files under ``folder`` looks like DICOM (suffix or preamble)."""
    for n, file in enumerate(iter_files(folder)):
        if n >= MAX_FILES_PROBED:
            return False
        if file.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(file):
            return True
    return False


def _has_direct_dicom(folder: Path) -> bool:
    return any(
        p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(p))
        for p in folder.iterdir()
    )


@register_adapter("dicom_folder", priority=PRIORITY)
class DicomFolderAdapter(Adapter):
    """A DICOM study folder (or one DICOM file), or a folder of such study folders."""

    @classmethod
    def is_study(cls, path: Path) -> bool:
        """A DICOM file, or a folder holding the images of one study."""
        if path.is_file():
            return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)
        if not path.is_dir() or claimed_as_root_by_higher_priority(cls, path):
            return False
        if _has_direct_dicom(path) and sample_study_uids(path):
            return True
        # Series in sub-folders: one study when every DICOM sub-folder reads and all share one UID;
        # an unreadable sub-folder makes this a root so that its failure is reported.
        per_folder = [sample_study_uids(sub) for sub in cls.list_studies(path)]
        if not per_folder or not all(per_folder):
            return False
        return len(set().union(*per_folder)) == 1

    @classmethod
    def is_root(cls, path: Path) -> bool:
        """A folder that is not one study but has at least one sub-folder that is."""
        if not path.is_dir() or cls.is_study(path):
            return False
        return any(cls.is_study(sub) for sub in cls.list_studies(path))

    @classmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Sub-folders holding DICOM-like files (broken ones too, so their failure is reported)."""
        if not root.is_dir():
            return []
        return sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _looks_dicom(p)
        )

    @classmethod
    def load_study(cls, path: Path) -> Study:
        """Reads every series of the folder; the study key is the folder name."""
        return read_dicom_study(path, dataset=cls.name)
