"""cmrfm.simulate: a controllable 3D+t synthetic heart that yields CMR images and ground truth.

Public entry points:

* :func:`simulate_study` (one subject → :class:`~cmrfm.data.study.Study`),
* :class:`SimulatedSliceDataset` (torch ``IterableDataset`` of 2D items, imported lazily),
* :func:`write_cohort` (a cohort on disk), :func:`sample_subject`, :class:`SimConfig`.
"""

from __future__ import annotations

from typing import Any

from cmrfm.simulate.config import SimConfig
from cmrfm.simulate.params import SubjectParams, sample_subject

__all__ = [
    "SimConfig",
    "SimulatedSliceDataset",
    "SubjectParams",
    "make_config",
    "sample_subject",
    "simulate_study",
    "write_cohort",
]


def __getattr__(name: str) -> Any:
    if name in ("simulate_study", "make_config", "subject_params"):
        from cmrfm.simulate import generator

        return getattr(generator, name)
    if name == "SimulatedSliceDataset":
        from cmrfm.simulate.dataset import SimulatedSliceDataset

        return SimulatedSliceDataset
    if name == "write_cohort":
        from cmrfm.simulate.cohort import write_cohort

        return write_cohort
    raise AttributeError(name)
