"""`pave make-corpus OUT --num-videos N [--seed S] [--webdataset] [--profile tiny|720p|1080p] [--processes P]`: write a
synthetic corpus whose content is known (layout, truth files and profiles: pipelines/corpus.py)."""
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("out", type=Path, help="new or empty directory for the corpus")
    parser.add_argument("--num-videos", type=int, required=True, metavar="N", help="number of takes")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    parser.add_argument("--webdataset", action="store_true", help="also write WebDataset shards of the main videos")
    parser.add_argument("--profile", default="tiny", choices=["tiny", "720p", "1080p"],
                        help="tiny: small takes of every kind with exo and RGB-D (default); 720p / 1080p: 30 fps "
                             "H.264 + AAC, 30-120 s, a keyframe every 2-4 s, textured, main videos only")
    parser.add_argument("--processes", type=int, default=1, help="processes writing takes at once (default 1)")


def run(args) -> int:
    import json
    import time

    from jobs.ray_runtime import output_path
    from pipelines.corpus import PROFILES, load_manifest, make_corpus

    args.out = Path(output_path(str(args.out), "OUT"))
    started = time.perf_counter()
    try:
        manifest = make_corpus(args.out, args.num_videos, seed=args.seed, webdataset=args.webdataset,
                               profile=PROFILES[args.profile], workers=args.processes)
    except (FileExistsError, ValueError) as err:
        raise SystemExit(f"pave make-corpus: {err}") from err
    rows = load_manifest(args.out)
    annotations = {s: len(json.loads((args.out / "annotations" / f"{s}.json").read_text())) for s in ("train", "eval")}
    print(f"{len(rows)} takes, {sum(len(r['exo']) for r in rows)} exo views, {annotations['train']} train / "
          f"{annotations['eval']} eval questions in {time.perf_counter() - started:.1f} s")
    print(f"manifest: {manifest}")
    return 0
