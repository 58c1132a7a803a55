"""`pave data convert TASK RAW... --out DIR`: a paper task's raw annotation files (the dataset's own downloads) into
what our jobs read (tasks/): OUT/{train,val,test}.json (annotation JSON, as the official PAVE tools build each
split), OUT/manifest.jsonl (the videos, or for the 3D tasks the posed frame folders, for `pave materialize
--input`) and OUT/dropped.jsonl (every raw item not converted, with the reason). Prints a one-line summary."""
import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args) -> int:
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
    for split in conversion.splits:
        load_annotations(written[split])  # what we wrote must be what `pave train` / `pave eval` accept
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in conversion.splits.items()) or "no"
    videos = (f"{len(conversion.videos)} videos in {written['manifest']}" if "manifest" in written
              else "no manifest (give --videos to check the videos and list them for pave materialize)")
    removed = f"; removed {', '.join(p.name for p in stale)} of an earlier conversion" if stale else ""
    print(f"{args.task}: {counts} samples in {out}; {videos}; {len(conversion.dropped)} dropped "
          f"({written['dropped']}){removed}")
    return 0
