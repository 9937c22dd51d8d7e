"""The dataset-adapter interface and its registry.

An adapter knows one on-disk layout (ACDC patient folders, a DICOM folder, EMIDEC PNGs, ...). It
says whether a path is one study of its kind or a root holding many, lists the studies under a
root, and loads one study into a :class:`~cmrfm.data.study.Study` with labels mapped to the
internal convention. A new layout is one small file that subclasses :class:`Adapter` and
registers itself with ``@ADAPTERS.register("name")``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from cmrfm.data.study import Study
from cmrfm.registry import Registry


class Adapter(ABC):
    """One on-disk dataset layout.

    Attributes:
        name: Registry name, set by the registration decorator's caller.
        priority: Adapters are tried from high to low priority when auto-detecting a path's
            layout; specific layouts (ACDC) beat generic ones (a folder of NIfTI files).
    """

    name: str = ""
    priority: int = 0

    @classmethod
    @abstractmethod
    def is_study(cls, path: Path) -> bool:
        """True when ``path`` is a single study in this layout."""

    @classmethod
    def is_root(cls, path: Path) -> bool:
        """True when ``path`` holds several studies in this layout."""
        return bool(cls.list_studies(path)) and not cls.is_study(path)

    @classmethod
    @abstractmethod
    def list_studies(cls, root: Path) -> list[Path]:
        """Paths of the studies under ``root`` (sorted)."""

    @classmethod
    @abstractmethod
    def load_study(cls, path: Path) -> Study:
        """Loads one study; raises :class:`~cmrfm.errors.InputError` naming the file on bad input."""


ADAPTERS: Registry[type[Adapter]] = Registry("dataset adapter")


def register_adapter(name: str, priority: int = 0):
    """Class decorator: registers an adapter under ``name`` with a detection priority."""

    def decorator(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        cls.priority = priority
        return ADAPTERS.register(name)(cls)

    return decorator
