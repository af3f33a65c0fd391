"""Tasks, metrics, data sources and the Lightning data module (imported on first use: the tasks and metrics
need neither Lightning nor `datasets`)."""

from typing import TYPE_CHECKING

from pdspace.lazy import lazy_exports

_TASKS = ("GLUE_TASKS", "TASKS", "DataError", "TaskSpec", "add_score", "decode_prediction", "encode_target",
          "files_task", "format_input", "get_task", "make_metrics", "task_spec")
__all__ = ["PDSpaceDataModule", "load_rows", *_TASKS]
__getattr__, __dir__ = lazy_exports(__name__, {"PDSpaceDataModule": "pdspace.data.datamodule",
                                               "load_rows": "pdspace.data.sources",
                                               **dict.fromkeys(_TASKS, "pdspace.data.tasks")})

if TYPE_CHECKING:
    from pdspace.data.datamodule import PDSpaceDataModule
    from pdspace.data.sources import load_rows
    from pdspace.data.tasks import (
        GLUE_TASKS,
        TASKS,
        DataError,
        TaskSpec,
        add_score,
        decode_prediction,
        encode_target,
        files_task,
        format_input,
        get_task,
        make_metrics,
        task_spec,
    )
