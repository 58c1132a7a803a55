"""`pave store ls|inspect|verify|gc|import`: look into a feature store (local path or fsspec URL), keep it healthy,
and bring released features into it. Every action but import also reports the damage a cheap look finds
(FeatureStore.damage) and then exits 1: a store that cannot serve all it holds is never reported as fine."""
from pathlib import Path


def add_arguments(parser):
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    ls = sub.add_parser("ls", help="versions: modality, fingerprint, schema, items ok/failed, size")
    ls.add_argument("store")
    inspect = sub.add_parser("inspect", help="one video's rows in every version that has it")
    inspect.add_argument("store")
    inspect.add_argument("video_id")
    inspect.add_argument("--modality")
    inspect.add_argument("--fingerprint", help="fingerprint id or a unique prefix of it")
    verify = sub.add_parser("verify", help="checksums, index consistency, NaN/inf scan; exit 1 on any problem")
    verify.add_argument("store")
    gc = sub.add_parser("gc", help="drop versions not kept, uncommitted parts of dead writers, stale claims")
    gc.add_argument("store")
    gc.add_argument("--keep", nargs="+", required=True, metavar="FP", help="fingerprint ids to keep (exact)")
    gc.add_argument("--grace-s", type=float, default=3600.0,
                    help="keep uncommitted parts whose writer showed life this recently (default 3600)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    imports = sub.add_parser("import", help="the PAVE authors' released side-channel features as a store version "
                                            "(tasks/features.py)")
    imports.add_argument("kind", help="imagebind-audio (Music-AVQA, AVSD), llava-3d (ScanQA, SQA3D) or languagebind "
                                      "(LLaVA-Video-178K)")
    imports.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="the unpacked release folder(s)")
    imports.add_argument("--store", required=True, help="feature store path or fsspec URL (created if missing)")
    imports.add_argument("--manifest", type=Path, help="`pave data convert`'s manifest.jsonl: the videos whose "
                                                       "frame times languagebind features need")
    imports.add_argument("--part-items", type=int, default=64, help="files per written part (default 64)")


def run(args) -> int:
    import sys

    from featurestore import FeatureError, FeatureStore

    if args.store_command == "import":
        return _import(args)
    action = {"ls": _ls, "inspect": _inspect, "verify": _verify, "gc": _gc}[args.store_command]
    store = FeatureStore(args.store)
    try:
        if not store.files.exists(""):  # a mistyped path must not read as an empty, healthy store
            raise FeatureError(f"{args.store}: no feature store there; check the path")
        code = action(store, args)
        damage = [] if args.store_command == "verify" else store.damage()  # verify reports it itself
    except FeatureError as e:
        print(f"pave store {args.store_command}: {e}", file=sys.stderr)
        return 2
    for problem in damage:
        print(f"DAMAGED {problem}")
    return 1 if damage else code


def _describe(info, size_bytes: int) -> str:
    s = info.schema
    extras = "".join(f" +{name}{list(shape)}:{dtype}" for name, (shape, dtype) in s.extras.items())
    return (f"{s.modality:8s} {info.fingerprint_id}  [N,{s.tokens_per_step},{s.dim}] {s.dtype}{extras}  "
            f"ok={info.n_ok} failed={info.n_failed}  {size_bytes / 2**20:,.1f} MiB  "
            f"encoder={info.spec.get('encoder')}  attrs={s.attrs}")


def _ls(store, args) -> int:
    infos = store.versions()
    if not infos:
        print(f"{store.url}: no versions")
    for info in infos:
        print(_describe(info, store.files.size(f"{info.modality}/{info.fingerprint_id}")))
    return 0


def _inspect(store, args) -> int:
    found = False
    for info in store.versions(args.modality):
        if not info.fingerprint_id.startswith(args.fingerprint or ""):
            continue
        version = store.version(info.modality, info.fingerprint_id)
        if args.video_id in version.failures():
            print(f"{version.path}: {args.video_id} FAILED: {version.failures()[args.video_id]}")
            found = True
        if args.video_id not in version.committed_items():
            continue
        found = True
        f = version.get(args.video_id)
        tokens = f.to_torch().float()
        print(f"{version.path}: {args.video_id}")
        print(f"  tokens {tuple(f.tokens.shape)} {f.schema.dtype}  mean={tokens.mean():.4g} std={tokens.std():.4g} "
              f"absmax={tokens.abs().max():.4g}")
        print(f"  time   {f.t_start[0]:.3f}s .. {f.t_end[-1]:.3f}s  t_start[:8]={f.t_start[:8].round(3).tolist()}")
        for name, values in f.extras.items():
            print(f"  {name:6s} {tuple(values.shape)} {values.dtype}")
    if not found:
        print(f"{args.video_id}: not in any matching version of {store.url}")
    return 0 if found else 1


def _verify(store, args) -> int:
    versions, incomplete = store.scan()
    for path, why in incomplete.items():
        print(f"BAD {path}\n    {why}")
    n_problems = len(incomplete)
    for version in versions:
        problems = version.verify()
        n_problems += len(problems)
        print(f"OK  {version.path} ({len(version.items())} items)" if not problems else f"BAD {version.path}")
        for problem in problems:
            print(f"    {problem}")
    print(f"{n_problems} problem(s)")
    return 1 if n_problems else 0


def _gc(store, args) -> int:
    removed = store.gc(args.keep, grace_s=args.grace_s, dry_run=args.dry_run)
    for path in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}")
    print(f"{len(removed)} path(s)")
    return 0


def _import(args) -> int:
    """Exit 1 when some files failed (each printed with its reason), 0 otherwise."""
    from jobs.ray_runtime import init_ray, output_path
    from tasks.features import import_release, listing

    items = listing(args.kind, args.dirs, args.manifest)  # bad arguments are refused before Ray starts
    store = output_path(args.store, "--store", urls=True)
    init_ray()
    summary = import_release(args.kind, items, store, args.part_items)
    for item, reason in sorted(summary.failures.items()):
        print(f"FAILED {item}: {reason}")
    print(summary.line(args.kind))
    return 1 if summary.failures else 0
