"""Tasks, metrics, data sources and the Lightning data module."""

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

__all__ = [
    "GLUE_TASKS", "TASKS", "DataError", "PDSpaceDataModule", "TaskSpec", "add_score", "decode_prediction",
    "encode_target", "files_task", "format_input", "get_task", "load_rows", "make_metrics", "task_spec",
]
