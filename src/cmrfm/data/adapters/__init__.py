"""Dataset adapters; importing this package registers every built-in adapter."""

from __future__ import annotations

import importlib

from cmrfm.data.adapters.base import ADAPTERS, Adapter, register_adapter

#: Modules that register adapters (each one small file).
_BUILTIN = ("acdc", "mnms", "emidec", "sunnybrook", "dicom_folder", "nifti")

for _name in _BUILTIN:
    try:
        importlib.import_module(f"cmrfm.data.adapters.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"cmrfm.data.adapters.{_name}":
            raise

__all__ = ["ADAPTERS", "Adapter", "register_adapter"]
