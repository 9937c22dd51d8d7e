"""Clinical tasks; importing this package registers every built-in task (one small file each)."""

from __future__ import annotations

import importlib

from cmrfm.tasks.base import TASKS, EvalResult, Task, TaskData, TaskInfo, TaskModel, register_task

#: Modules that register tasks, in the order ``cmrfm tasks`` lists them.
_BUILTIN = (
    "sequence_cls",
    "view_cls",
    "sax_seg",
    "lax_seg",
    "lge_seg",
    "mapping_seg",
    "landmarks",
    "lge_infarct",
    "disease_cls",
    "quality_cls",
)

for _name in _BUILTIN:
    try:
        importlib.import_module(f"cmrfm.tasks.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"cmrfm.tasks.{_name}":
            raise

__all__ = ["TASKS", "EvalResult", "Task", "TaskData", "TaskInfo", "TaskModel", "register_task"]
