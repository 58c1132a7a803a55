"""`pave data convert TASK RAW... --out DIR`: a paper task's raw annotation files (the dataset's own downloads) into
what our jobs read (tasks/): OUT/{train,val,test}.json (annotation JSON, as the official PAVE tools build each
split), OUT/manifest.jsonl (the videos, or for the 3D tasks the posed frame folders, for `pave materialize
--input`) and OUT/dropped.jsonl (every raw item not converted, with the reason). Prints a one-line summary; a
conversion that keeps no sample is an error (exit 2) that summarises the reasons.

`pave data check --annotations A --store S [--eval-annotations E]`: what `pave train` would train on, without Ray:
the samples, the items each modality's store version lacks, repeated questions, what the eval file shares with the
training file, and the tokens per sample. Exit 0 when trainable, else 2 with one line per problem class."""
import argparse
import statistics
from pathlib import Path

CHECKED_FILES = ("train", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.config import ModelConfig, PatchesConfig, add_fingerprint_argument, add_storage_arguments

    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    convert = sub.add_parser("convert", help="raw task annotations -> annotation JSON per split + materialize manifest")
    convert.add_argument("task", help="music-avqa, avsd, scanqa, sqa3d or llava-video")
    convert.add_argument("raw", nargs="+", help="the dataset's annotation files, under their own names (which say "
                         "the split: train, val or test)")
    convert.add_argument("--out", required=True, help="output directory")
    convert.add_argument("--videos", action="append", default=[], metavar="DIR",
                         help="folder holding the task's videos (3D tasks: the scene frame folders); repeat for "
                              "several, searched in order. Samples whose video is missing are dropped. Without it "
                              "no manifest is written and nothing is checked")
    check = sub.add_parser("check", help="what pave train would train on: samples, missing features, overlaps, "
                                         "tokens (no Ray)")
    check.add_argument("--annotations", required=True, help="the training annotation JSON")
    check.add_argument("--store", required=True, help="feature store path or fsspec URL")
    check.add_argument("--eval-annotations", metavar="FILE",
                       help="the held-out annotation JSON: checked too, and for videos and questions it shares with "
                            "--annotations")
    check.add_argument("--sides", nargs="*", default=PatchesConfig().sides, metavar="NAME",
                       help=f"side channels, as pave train takes them (default {' '.join(PatchesConfig().sides)})")
    add_fingerprint_argument(check, "store version of a modality, for a store with several")
    check.add_argument("--base-model", metavar="DIR", help="count text tokens with this model's tokenizer "
                                                           "(default: count words)")
    check.add_argument("--model.newline", dest="newline", default=ModelConfig().newline, choices=["grid", "one"],
                       help=f"video newline layout the token counts assume, as pave train's "
                            f"(default {ModelConfig().newline})")
    add_storage_arguments(check)


def run(args) -> int:
    return check(args) if args.data_command == "check" else convert(args)


def convert(args) -> int:
    from jobs.ray_runtime import output_path
    from pipelines.annotations import load_annotations
    from tasks import task
    from tasks.common import Conversion, TaskDataError

    module = task(args.task)
    out = Path(output_path(args.out, "--out"))
    roots = [Path(v) for v in args.videos]
    if missing := [str(r) for r in roots if not r.is_dir()]:
        raise TaskDataError(f"--videos {missing[0]}: no such folder; give the folder that holds the task's videos")
    conversion = Conversion(roots)
    module.convert(conversion, [Path(p) for p in args.raw])
    written, stale = conversion.write(out)
    if not conversion.splits:
        held = (f"all {len(conversion.dropped)} raw item(s) were dropped: {conversion.drop_reasons()}"
                if conversion.dropped else "the raw files hold no items")
        raise TaskDataError(f"{args.task}: no sample kept, {held}; every item and its reason: {written['dropped']}")
    for split in conversion.splits:
        load_annotations(written[split])  # what we wrote must be what `pave train` / `pave eval` accept
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in conversion.splits.items())
    videos = (f"{len(conversion.videos)} videos in {written['manifest']}" if "manifest" in written
              else "no manifest (give --videos to check the videos and list them for pave materialize)")
    removed = f"; removed {', '.join(p.name for p in stale)} of an earlier conversion" if stale else ""
    print(f"{args.task}: {counts} samples in {out}; {videos}; {len(conversion.dropped)} dropped "
          f"({written['dropped']}){removed}")
    return 0


def check(args) -> int:
    import sys

    from featurestore import FeatureError, FeatureStore
    from pipelines.annotations import load_annotations, store_problems
    from training.config import storage_config

    storage = storage_config(args)
    paths = dict(zip(CHECKED_FILES, [args.annotations, args.eval_annotations]))
    paths = {name: path for name, path in paths.items() if path}
    samples = {name: load_annotations(path, storage.options(path)) for name, path in paths.items()}
    store = FeatureStore(args.store, storage_options=storage.options(args.store))
    fingerprints = args.fingerprint
    modalities = ["video", *(m for entry in args.sides for m in entry.split(",") if m)]  # `--sides a,b` too
    versions, missing = {}, []
    for modality in modalities:
        try:
            versions[modality] = store.version(modality, fingerprints.get(modality))
        except FeatureError as err:  # no such modality, or several versions: nothing of it can be trained
            missing.append(str(err))
    stored = {m: v.committed_items() for m, v in versions.items()}
    videos = {name: {s.video_id for s in samples[name]} for name in paths}
    missing += [f"{paths[name]}: {'; '.join(lacks)}" for name in paths
                if (lacks := store_problems(samples[name], stored))]
    usable = {name: [s for s in samples[name] if len(versions) == len(modalities)
                     and all(s.video_id in items for items in stored.values())] for name in paths}

    lines = ["; ".join(f"{paths[name]}: {len(samples[name])} samples on {len(videos[name])} videos" for name in paths),
             f"store {args.store}:",
             _table(["modality", "version", "items", *(f"missing ({name})" for name in paths)],
                    [[m, v.fingerprint.id, len(stored[m]), *(len(videos[name] - stored[m]) for name in paths)]
                     for m, v in versions.items()]),
             "repeated questions (same video and question): "
             + ", ".join(f"{name} {_repeats(samples[name])}" for name in paths)]
    if "eval" in paths:
        lines.append(f"eval/train overlap: {_overlap(samples['train'], samples['eval'])}")
    if "video" in versions:
        lines += [f"tokens per sample (newline layout {args.newline}):",
                  _table(["", "min", "median", "max"], _token_rows(samples, versions["video"], args))]
    lines.append("trainable: " + ", ".join(f"{len(usable[name])} of {len(samples[name])} samples of {paths[name]}"
                                           for name in paths))
    print("\n".join(lines))
    problems = [f"missing items: {'; '.join(missing)}"] if missing else []
    if not usable["train"]:
        problems.append(f"nothing to train: no sample of {args.annotations} has all its features in {args.store}")
    for problem in problems:
        print(f"pave data check: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _repeats(samples) -> str:
    """How many samples ask a question another one asked of the same video, with an example."""
    first, repeats = {}, []
    for s in samples:
        key = (s.video_id, s.question)
        if key in first:
            repeats.append(f"{s.id!r} repeats {first[key]!r}")
        first.setdefault(key, s.id)
    return f"{len(repeats)}" + (f" (e.g. {repeats[0]})" if repeats else "")


def _overlap(train, held_out) -> str:
    from pipelines.annotations import overlap

    videos, same = overlap(train, held_out)
    example = f" (e.g. eval {same[0][0]!r} and train {same[0][1]!r})" if same else ""
    return (f"{len(videos)} videos" + (f" (e.g. {sorted(videos)[0]!r})" if videos else "") +
            f", {len(same)} samples with the same video and question" + example)


def _token_rows(samples: dict, video, args) -> list[list]:
    """Per file: the LLM tokens of each sample's video (its stored frames, as the model lays them out) and of its
    text (turns without the video marker: tokenizer tokens with --base-model, else words)."""
    from model.llava import VideoLayout, patch_grid
    from pipelines.annotations import plain

    layout = VideoLayout(patch_grid(video.schema), args.newline)
    rows = video.index().rows  # item -> (part, first row, end row): frames without reading any tokens
    if args.base_model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.base_model)
        unit, count = "tokens", lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)
    else:
        unit, count = "words", lambda text: len(text.split())
    table = []
    for name, file_samples in samples.items():
        frames = [rows[s.video_id][2] - rows[s.video_id][1] for s in file_samples if s.video_id in rows]
        texts = [sum(count(plain(text)) for _, text in s.turns) for s in file_samples]
        if frames:
            table.append(_stats(f"{name} video", [layout.llm_tokens(f, video.schema.tokens_per_step) for f in frames]))
        table.append(_stats(f"{name} text ({unit})", texts))
    return table


def _stats(label: str, values: list[int]) -> list:
    return [label, min(values), int(statistics.median(values)), max(values)]


def _table(header: list[str], rows: list[list]) -> str:
    """Numbers right-aligned, the rest left-aligned."""
    numeric = [all(isinstance(row[k], int) for row in rows) for k in range(len(header))]
    cells = [header, *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    return "\n".join("  " + "  ".join(c.rjust(w) if right else c.ljust(w) for c, w, right in zip(row, widths, numeric))
                     for row in cells)
