"""`pave score TASK --annotations RAW --predictions FILE [--strict]`: the metrics the official PAVE evaluator of a
paper task reports, under its names, printed as one JSON object (notes on how they were obtained go to stderr).

RAW is the task's raw eval file (the one `pave data convert` read); FILE is the official eval output of that task or
`pave eval`'s report.json. The default reproduces the official rules, quirks included; --strict fixes the plain bugs:

- music-avqa  default:  correct iff the target (the one in the prediction file) is a substring of the prediction,
                        lower-cased; percent with 2 decimals
              --strict: correct iff equal after lower-casing, "_" -> " ", punctuation dropped, digits as words;
                        the target from RAW
- scanqa      default:  LEO's clean_answer (spaces are trimmed before punctuation is dropped, so "chair ." fails);
                        an empty prediction counts as refined-correct
              --strict: spaces trimmed after punctuation is dropped, "’" and "ç" mapped; an empty prediction is wrong
- sqa3d       default:  as scanqa; per-type scores divide by count + 1e-10
              --strict: as scanqa; exact per-type scores, null for an empty type
- avsd        default:  only the dialogs that have a prediction are scored
              --strict: every dialog needs a prediction

Each task module (tasks/*.py) documents its rules in full. Caption metrics need Java (tasks/captions.py)."""
import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="music-avqa, avsd, scanqa or sqa3d")
    parser.add_argument("--annotations", required=True,
                        help="the task's raw eval file: avqa-test.json, the AVSD mock test file, ScanQA_v1.0_val.json, "
                             "SQA_test.json")
    parser.add_argument("--predictions", required=True,
                        help="the official eval output of the task, or `pave eval`'s report.json")
    parser.add_argument("--strict", action="store_true",
                        help="fix the official scorers' plain bugs (jobs/score.py lists both rule sets)")


def run(args) -> int:
    import json

    from tasks import task
    from tasks.common import TaskDataError

    module = task(args.task)
    if not hasattr(module, "score"):
        raise TaskDataError(f"{args.task} has no scorer here: its benchmarks (VideoMME, MVBench) are scored by "
                            "lmms-eval")
    print(json.dumps(module.score(Path(args.annotations), Path(args.predictions), args.strict), indent=2))
    return 0
