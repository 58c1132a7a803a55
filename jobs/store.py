"""`pave store ls|inspect|verify|gc|import`: look into a feature store (local path or fsspec URL), keep it healthy,
and bring released features into it. Every action but import also reports the damage a cheap look finds
(FeatureStore.damage) and then exits 1: a store that cannot serve all it holds is never reported as fine."""
from pathlib import Path

from training.config import add_storage_arguments, storage_config


def add_store(action) -> None:
    """--store, as every command names the store; the positional STORE of earlier releases still works."""
    action.add_argument("--store", help="feature store path or fsspec URL")
    action.add_argument("store_path", nargs="?", metavar="STORE", help="the same, as earlier releases took it")


def store_of(args) -> str:
    if args.store and args.store_path and args.store != args.store_path:
        raise SystemExit(f"two stores given: --store {args.store} and {args.store_path}; give one")
    if not (args.store or args.store_path):
        raise SystemExit("--store is required: the feature store's path or URL")
    return args.store or args.store_path


def add_arguments(parser):
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="ACTION", parser_class=type(parser))
    ls = sub.add_parser("ls", help="versions: modality, fingerprint, schema, items ok/failed, size")
    add_store(ls)
    inspect = sub.add_parser("inspect", help="one video's rows in every version that has it")
    inspect.add_argument("--item", dest="video_id", required=True, help="the item (video) id")
    add_store(inspect)
    inspect.add_argument("--modality")
    inspect.add_argument("--fingerprint", help="fingerprint id or a unique prefix of it")
    verify = sub.add_parser("verify", help="checksums, index consistency, NaN/inf scan, parts without a commit "
                                           "record; exit 1 on any problem")
    add_store(verify)
    verify.add_argument("--grace-s", type=float, default=3600.0,
                        help="a finished part without a commit record idle longer than this is a problem (gc "
                             "removes it with this --grace-s); younger ones are warnings (default 3600)")
    gc = sub.add_parser("gc", help="drop versions not kept, uncommitted parts of dead writers, stale claims; prints "
                                   "what it removes and what it spares, with why")
    add_store(gc)
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
    for action in (ls, inspect, verify, gc, imports):
        add_storage_arguments(action)


def run(args) -> int:
    import sys

    from featurestore import FeatureError, FeatureStore

    if args.store_command == "import":
        return _import(args)
    action = {"ls": _ls, "inspect": _inspect, "verify": _verify, "gc": _gc}[args.store_command]
    args.store = store_of(args)
    store = FeatureStore(args.store, storage_config(args).options(args.store))
    try:
        store.check_root()  # a mistyped path must not read as an empty, healthy store
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
    """Exit 0 when every matching version that has the item reads it; 1 when one holds it as failed or cannot read
    it, or none has it."""
    from featurestore import FeatureError

    found, code = False, 0
    for info in store.versions(args.modality):
        if not info.fingerprint_id.startswith(args.fingerprint or ""):
            continue
        version = store.version(info.modality, info.fingerprint_id)
        if args.video_id in version.failures():
            print(f"{version.path}: {args.video_id} FAILED: {version.failures()[args.video_id]}")
            found, code = True, 1
        if args.video_id not in version.committed_items():
            continue
        found = True
        try:
            f = version.get(args.video_id)
        except FeatureError as e:
            print(f"{version.path}: {args.video_id} UNREADABLE: {e}")
            code = 1
            continue
        tokens = f.to_torch().float()
        print(f"{version.path}: {args.video_id}")
        print(f"  tokens {tuple(f.tokens.shape)} {f.schema.dtype}  mean={tokens.mean():.4g} std={tokens.std():.4g} "
              f"absmax={tokens.abs().max():.4g}")
        print(f"  time   {f.t_start[0]:.3f}s .. {f.t_end[-1]:.3f}s  t_start[:8]={f.t_start[:8].round(3).tolist()}")
        for name, values in f.extras.items():
            print(f"  {name:6s} {tuple(values.shape)} {values.dtype}")
    if not found:
        print(f"{args.video_id}: not in any matching version of {store.url}")
    return code if found else 1


def _verify(store, args) -> int:
    versions, incomplete = store.scan()
    for path, why in incomplete.items():
        print(f"BAD {path}\n    {why}")
    n_problems = len(incomplete)
    for version in versions:
        problems = version.verify()
        uncommitted = version.uncommitted_parts(args.grace_s)
        lost = [part for part in uncommitted if part.lost]
        n_problems += len(problems) + len(lost)
        print(f"OK  {version.path} ({len(version.items())} items)" if not problems + lost else f"BAD {version.path}")
        for problem in problems:
            print(f"    {problem}")
        for part in uncommitted:
            if part.lost:
                print(f"    {part.path}: {part.state}: its items {part.unserved} are not served (the record was lost, "
                      "or never written); rerun the job that wrote them to write them again, then `pave store gc` "
                      "removes this part")
            else:
                why = part.spared or ("its items are served by other parts" if part.items else
                                      "its writer stopped before finishing it")
                print(f"    warning: {part.path}: {part.state}: {why}; `pave store gc` removes it once its writer "
                      f"is idle for --grace-s")
    print(f"{n_problems} problem(s)")
    return 1 if n_problems else 0


def _gc(store, args) -> int:
    report = store.gc(args.keep, grace_s=args.grace_s, dry_run=args.dry_run)
    for path, why in report.removed.items():
        print(f"{'would remove' if args.dry_run else 'removed'} {path}: {why}")
    for path, why in report.kept.items():
        print(f"kept {path}: {why}")
    print(f"{len(report.removed)} path(s) {'to remove' if args.dry_run else 'removed'}, {len(report.kept)} spared")
    return 0


def _import(args) -> int:
    """Exit 1 when some files failed (each printed with its reason), 0 otherwise."""
    from jobs.ray_runtime import init_ray, output_path
    from tasks.features import import_release, listing, release

    items, others = listing(args.kind, args.dirs, args.manifest)  # bad arguments are refused before Ray starts
    if others:
        shown = ", ".join(map(str, others[:5])) + (", ..." if len(others) > 5 else "")
        print(f"skipped {len(others)} file(s) that are not the release's {release(args.kind).layout}: {shown}")
    store = output_path(args.store, "--store", urls=True)
    init_ray()
    summary = import_release(args.kind, items, store, args.part_items, storage_config(args).options(store))
    for item, reason in sorted(summary.failures.items()):
        print(f"FAILED {item}: {reason}")
    print(summary.line(args.kind))
    return 1 if summary.failures else 0
