"""`pave materialize --input SRC --store STORE --modalities video,audio,...`: decode videos and write timestamped
tokens into a feature store, as a Ray Data job (pipelines/materialize.py). Connects to the cluster in RAY_ADDRESS
when set (as under `ray job submit`), else starts a local Ray. Exit status: 1 when a requested modality stored
nothing (every item failed or had no input for it; items committed before or by a concurrent job count as stored),
or with --strict when any item failed; 0 otherwise (a rerun that finds everything done included). An error that
does not come from the input (our code, an encoder) stops the job with its traceback."""


def add_arguments(parser):
    from pipelines.audio import AUDIO_WINDOWS
    from pipelines.settings import DECODERS, ENCODER_DTYPES, RESIZES, Resources, Settings
    from training.config import add_storage_arguments

    # The defaults are the pipeline's own (one place): Settings say what the tokens are, Resources how the job runs.
    settings, resources = Settings(), Resources()
    parser.add_argument("--input", required=True, metavar="SRC",
                        help="directory of videos, directory of (or one) WebDataset .tar shards, or a .jsonl manifest")
    parser.add_argument("--store", required=True, help="feature store path or fsspec URL")
    parser.add_argument("--modalities", default="video", type=lambda s: [m for m in s.split(",") if m],
                        help="comma-separated from video,audio,hfr,exo,3d (default video)")
    parser.add_argument("--encoder-path", action="append", default=[], metavar="M=DIR",
                        help="local HF directory of modality M's encoder (repeatable); video/hfr/exo accept a "
                             "LlavaOnevisionForConditionalGeneration dir. Without: a tiny untrained encoder")
    parser.add_argument("--root", help="directory that relative exo/rgbd paths of WebDataset samples are under "
                                       "(default: the directory above the shards')")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any item failed")
    parser.add_argument("--frames", type=int, default=settings.frames,
                        help=f"frames per video and per exo view (default {settings.frames})")
    parser.add_argument("--hfr-fps", type=float, default=settings.hfr_fps,
                        help=f"high frame rate sampling (default {settings.hfr_fps} fps)")
    parser.add_argument("--grid-3d", type=int, default=settings.grid_3d,
                        help=f"3D patches per side (default {settings.grid_3d})")
    parser.add_argument("--audio-channel", type=int, metavar="N",
                        help="audio from channel N alone (0: the first, as the PAVE release's ImageBind features "
                             "were made) (default: the mean of the channels)")
    parser.add_argument("--audio-windows", default=settings.audio.windows, choices=AUDIO_WINDOWS,
                        help=f"2 s audio windows every 1 s: cover = until one reaches the track's end (the last may "
                             f"be shorter), official = the PAVE release's int(T) - 1 whole windows, T the track's "
                             f"length in seconds (default {settings.audio.windows})")
    parser.add_argument("--video-tokens", default=settings.video_tokens, choices=["full", "pooled"],
                        help=f"main video tokens: the full patch grid, projected then pooled by the model exactly as "
                             f"HF does, or pre-pooled (3.7x smaller; the projector then sees pooled tokens, unlike "
                             f"the pretrained model) (default {settings.video_tokens})")
    parser.add_argument("--dtype", default=settings.dtype, choices=["float16", "bfloat16", "float32"],
                        help=f"stored token dtype (default {settings.dtype})")
    parser.add_argument("--encoder-dtype", default=settings.encoder_dtype, choices=ENCODER_DTYPES,
                        help=f"what the encoders compute in; bfloat16 on GPUs, as a bf16 LLaVA-OneVision runs its "
                             f"tower (default {settings.encoder_dtype})")
    parser.add_argument("--resize", default=settings.resize, choices=RESIZES,
                        help=f"how frames become the vision encoder's input: swscale (CPU, in the decode) or torch "
                             f"(bicubic with antialiasing, on the device that holds the frames: needed to decode on "
                             f"GPUs) (default {settings.resize})")
    parser.add_argument("--decoder", default=resources.decoder, choices=DECODERS,
                        help=f"who decodes the main video: nvdec = the GPU encoder actors (PyNvVideoCodec, --resize "
                             f"torch-bicubic), pyav = CPU tasks, auto = nvdec when it can run "
                             f"(default {resources.decoder})")
    parser.add_argument("--vision-layer", type=int,
                        help="hidden layer of the vision tower (default: the LLaVA config's, else -1)")
    parser.add_argument("--items-per-call", type=int, default=resources.batch_size,
                        help=f"items per encoder call (default {resources.batch_size})")
    parser.add_argument("--rows-per-forward", type=int, default=resources.rows_per_forward,
                        help=f"frames/windows/views per encoder forward pass (default {resources.rows_per_forward})")
    parser.add_argument("--concurrency", default=str(resources.concurrency), metavar="N|MIN,MAX",
                        help=f"encoder actors: a number or an autoscaling range (default {resources.concurrency})")
    parser.add_argument("--calls-per-actor", type=int, default=resources.calls_per_actor,
                        help="concurrent encoder calls per actor: threads that share the actor's encoder and GPU, "
                             f"decoding while others encode; fewer actors load the encoder (default "
                             f"{resources.calls_per_actor})")
    parser.add_argument("--num-gpus", type=float, help="GPUs per encoder actor (default: 1 if the cluster has GPUs); "
                        "a fraction runs several actors per GPU, each with its own decoder session and encoder copy")
    parser.add_argument("--part-items", type=int, default=resources.part_items,
                        help=f"items per written part (default {resources.part_items})")
    parser.add_argument("--owner", help="job name in item claims; reuse it to resume a crashed job at once")
    parser.add_argument("--lease-s", type=float, default=resources.lease_s,
                        help=f"claim lease in seconds (default {resources.lease_s:.0f})")
    parser.add_argument("--summary-json", help="also write the summary here as JSON")
    add_storage_arguments(parser)


def _encoder_paths(values: list[str]) -> dict[str, str]:
    paths = {}
    for value in values:
        modality, sep, path = value.partition("=")
        if not sep or not path:
            raise SystemExit(f"pave materialize: --encoder-path {value!r} is not M=DIR")
        paths[modality] = path
    return paths


def run(args) -> int:
    import dataclasses
    import json
    import os
    import sys

    from jobs.ray_runtime import gpus_pending, init_ray, output_path
    from pipelines.audio import AudioWindows
    from pipelines.materialize import (MODALITIES, Resources, Settings, actor_gpus, check_settings, decode_on_gpus,
                                       materialize)
    from training.config import storage_config
    from pipelines.sources import list_items, unlisted_files

    store = output_path(args.store, "--store", urls=True)
    if os.path.isfile(store):
        raise SystemExit(f"--store {store}: a file, not a feature store; give a folder (new, or a store to add to)")
    encoder_paths = _encoder_paths(args.encoder_path)
    unknown = (set(args.modalities) | set(encoder_paths)) - set(MODALITIES)
    if unknown:
        raise SystemExit(f"pave materialize: unknown modalities {sorted(unknown)}; known: {','.join(MODALITIES)}")
    try:
        concurrency = tuple(int(n) for n in args.concurrency.split(","))
    except ValueError:
        raise SystemExit(f"--concurrency {args.concurrency!r}: expected a number N or a range MIN,MAX") from None
    resources = Resources(batch_size=args.items_per_call, rows_per_forward=args.rows_per_forward,
                          concurrency=concurrency[0] if len(concurrency) == 1 else concurrency,
                          calls_per_actor=args.calls_per_actor,
                          num_gpus=args.num_gpus, part_items=args.part_items, lease_s=args.lease_s,
                          decoder=args.decoder)
    try:
        settings = Settings(frames=args.frames, video_tokens=args.video_tokens, hfr_fps=args.hfr_fps,
                            grid_3d=args.grid_3d, dtype=args.dtype, vision_layer=args.vision_layer,
                            encoder_dtype=args.encoder_dtype, resize=args.resize,
                            audio=AudioWindows(channel=args.audio_channel, windows=args.audio_windows))
        check_settings(settings, resources)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    listing = list_items(args.input, args.root)
    ray = init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = True
    gpus = actor_gpus(resources)
    try:
        decode_on_gpus(settings, resources, gpus)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if gpus and gpus_pending(ray, f"--num-gpus {args.num_gpus:g}", "leave --num-gpus out to encode on CPUs"):
        print(f"pave materialize: --num-gpus {args.num_gpus:g} and no GPU in the cluster yet: the encoder actors wait "
              "for GPU nodes to join", file=sys.stderr)
    summary = materialize(listing.dataset(), store, args.modalities, encoder_paths, settings,
                          resources, owner=args.owner, storage_options=storage_config(args).options(store))
    summary.notes += [line for line in [unlisted_files(args.input)] if line]
    print(summary.table())
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(dataclasses.asdict(summary), f, indent=1)
    return summary.exit_code(args.strict)
