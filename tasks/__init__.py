"""The paper's tasks (Music-AVQA, AVSD, ScanQA, SQA3D, LLaVA-Video-178K): their raw downloads converted into our
annotation JSON and `pave materialize` manifests (`pave data convert`), and their metrics computed the way the
official PAVE evaluators compute them (`pave score`). One module per task family; tasks/common.py holds what they
share. The facts each module follows, with the official file for each, are in docs/PAPER_TASKS.md."""
import importlib

# task name -> its module
TASKS = {"music-avqa": "tasks.music_avqa", "avsd": "tasks.avsd", "scanqa": "tasks.scanqa", "sqa3d": "tasks.sqa3d",
         "llava-video": "tasks.llava_video"}


def task(name: str):
    """The module of task `name`; TaskDataError for a name we do not know."""
    from tasks.common import TaskDataError

    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
