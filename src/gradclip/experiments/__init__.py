"""Experiments behind ``gradclip compare``: the classic before/after clipping experiment."""

from gradclip.experiments._compare import DEFAULT_METHODS, DEFAULT_SEEDS, FRAMEWORKS, CompareInterrupted, compare
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import TASKS, Data, Task, get_task

__all__ = ["CompareInterrupted", "DEFAULT_METHODS", "DEFAULT_SEEDS", "FRAMEWORKS", "TASKS", "Data", "RunResult", "Task", "compare", "get_task"]
