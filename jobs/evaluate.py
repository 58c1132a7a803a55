"""`pave eval`: generate answers with a trained PAVE model (or the bare base model) from stored features, on
--workers Ray actors, and score them (training/evaluation.py). Writes report.json and report.md into --out (a path or
an object-store URL, as --checkpoint and --store may be); with
--task, generates with that paper task's official settings and also writes its official scores (scores.json)."""
import argparse
import time
from pathlib import Path

from training.config import add_fingerprint_argument, add_storage_arguments, storage_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, help="LLaVA conversation JSON of the questions")
    parser.add_argument("--checkpoint", default="", help="a `pave train` final/ dir; empty: the base model alone")
    parser.add_argument("--store", default="", help="feature store (default: the checkpoint's training store)")
    parser.add_argument("--base-model", default="", help="default: the base model recorded in the checkpoint")
    parser.add_argument("--out", required=True, help="report directory")
    add_fingerprint_argument(parser, "store version of a modality (default: the checkpoint's)")
    parser.add_argument("--workers", type=int, default=1, help="Ray actors generating in parallel (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=0, help="default: the run config's eval.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="the most new tokens of an answer (default: the run config's eval.max_new_tokens, which "
                             "`pave train` sets to its longest answer plus a margin; without one, the longest answer "
                             "of --annotations plus a margin)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate the first N samples of --annotations only")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the decode step into CUDA graphs (default: the run config's eval.compile; "
                             "unset there: on GPUs)")
    parser.add_argument("--name", default="", help="label of this model in the report (default: checkpoint dir)")
    parser.add_argument("--task", help="a paper task (music-avqa, avsd, scanqa, sqa3d): generate with its official "
                                       "settings (greedy, up to 1024 new tokens, batch 1; flags given override) and "
                                       "score with its official metrics into scores.json (tasks/)")
    parser.add_argument("--task-annotations", metavar="RAW",
                        help="with --task: the task's raw eval file, as `pave score --annotations` takes it")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="evaluate on features or a base model other than those the checkpoint was trained on "
                             "(refused by default), with a warning")
    add_storage_arguments(parser)


def official_task(args):
    """The task module of --task, checked before any generation: it has a scorer, and its raw eval file exists."""
    from tasks import task
    from tasks.common import TaskDataError

    module = task(args.task)
    if args.limit is not None:
        raise TaskDataError(f"--limit {args.limit} evaluates part of the questions, and --task {args.task}'s official "
                            "scores need every one: drop --limit, or --task to generate without the official scores")
    if not hasattr(module, "score"):
        raise TaskDataError(f"--task {args.task}: no official scorer here (its benchmarks, VideoMME and MVBench, are "
                            "scored by lmms-eval); evaluate without --task")
    if not args.task_annotations or not Path(args.task_annotations).is_file():
        raise TaskDataError(f"--task {args.task} needs --task-annotations RAW, the task's raw eval file "
                            f"(got {args.task_annotations or 'none'})")
    args.batch_size = args.batch_size or OFFICIAL["batch_size"]
    args.max_new_tokens = args.max_new_tokens or OFFICIAL["max_new_tokens"]
    return module


# The official PAVE evaluators' generation (docs/PAPER_TASKS.md §0): greedy (ours always is),
# up to 1024 new tokens, one question at a time, stopping at the chat template's end of turn (the tokenizer's eos).
OFFICIAL = {"batch_size": 1, "max_new_tokens": 1024}


def start_ray() -> None:
    from jobs.ray_runtime import init_ray

    ray = init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = True  # generation progress, with an ETA


def run(args) -> int:
    import json

    from jobs.ray_runtime import output_dir, output_path
    from training.evaluation import REPORT, EvalRequest, evaluate, write_report
    from training.rundir import RunDir

    started = time.perf_counter()
    module = official_task(args) if args.task else None
    storage = storage_config(args)
    # absolute: the Ray actors that load them need not run in this directory
    local = {flag: output_path(value, flag, urls=True) if value else "" for flag, value in
             {"--annotations": args.annotations, "--checkpoint": args.checkpoint, "--store": args.store,
              "--base-model": args.base_model}.items()}
    request = EvalRequest(local["--annotations"], local["--checkpoint"], local["--store"], local["--base-model"],
                          args.fingerprint, args.workers, args.gpus_per_worker,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                          compile=args.compile, allow_mismatch=args.allow_mismatch, storage=storage)
    with RunDir(output_dir(args.out, "--out", urls=True), storage.options(args.out)) as out:
        report = evaluate(request, start_ray)  # bad input raises errors that jobs/cli.py prints as one line
        name = args.name or args.checkpoint or "base model"
        write_report(report, out, name)
        m = report["metrics"]
        print(f"{name}: exact match {m['exact_match']:.3f}, CIDEr {m['cider']:.3f} over {m['n']} samples on "
              f"{len(report['workers'])} worker(s) ({time.perf_counter() - started:.0f} s) -> "
              f"{out.location('report.md')}")
        if module:
            scores = module.score(Path(args.task_annotations), out.path / REPORT, False)
            (out.path / "scores.json").write_text(json.dumps(scores, indent=2))
            out.push("scores.json")
            print(f"{args.task} official scores -> {out.location('scores.json')}\n{json.dumps(scores, indent=2)}")
    return 0
