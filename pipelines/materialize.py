"""Materialization: decode videos once, encode them, and store timestamped tokens per modality in a feature store.

For each modality, one Ray Data job over the item dataset (see sources.read_items):

    items --prepare (CPU tasks)--> inputs --Encode (actor pool, GPU if any)--> tokens --write (tasks)--> status rows

- prepare: claims its items in the store (so concurrent jobs split the work instead of writing items twice),
  decodes with true timestamps and builds the encoder's inputs; an input it cannot use becomes a "failed" row
  with the reason, never a substitute sample. With GPU decoding (Resources.decoder), prepare reads only the main
  video's packets (its frames' true times) and hands the encoder actor a decode plan (pipelines/nvdec.py);
- Encode: one encoder per actor, several items per forward pass (pipelines/encoders.py); it decodes planned items
  on its GPU first;
- write: each task writes its batch as one part (PartWriter: a writer owns whole parts), failures included, and
  returns one status row per item: ok | failed | skipped, with the reason.

Modalities (what each row of the store holds):
- video: `frames` frames uniform in time -> vision tower layer features, every patch (or, video_tokens="pooled",
         2x2 bilinear pooled); t = frame pts.
- hfr:   the frames on screen every 1/hfr_fps s -> vision tower features pooled to 2x2 (4 tokens); t = frame pts.
- audio: 2 s windows every 1 s (pipelines/audio.py) -> one token each; [t_start, t_end] = the window's span. The
         channels' mean or one channel, windows covering the track or the PAVE release's (Settings.audio).
- exo:   `frames` frames of each exo view -> as video; t = view pts + the view's offset_s (the main timeline);
         extra `view` (int32); rows in time order, views at one time in view order.
- 3d:    each posed RGB-D view -> world points -> grid x grid patches -> point tokens; t = the view's time;
         extras `pose` (camera-to-world [4,4] f64), `xyz` (patch mean world xyz [P,3] f32), `coverage` ([P] f32).
Every time is seconds on the main video's presentation timeline (pts x time_base, as PyAV reports it)."""
import errno
import json
import re
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import ray

from featurestore import FeatureError, FeatureStore, TokenSchema, Version, fingerprint, id_problem

from .encoders import Encode, InputSpec, audio_encoder, point_encoder, vision_encoder, weights_digest
from .geometry import view_patches
from .identity import identity, unchanged
from .media import (DECODE_ERRORS, ItemError, gpu_decode_plan, rate_frames, read_audio, read_frames,
                    uniform_frames)
from .nvdec import installed as nvdec_installed
from .settings import DECODERS, ENCODER_DTYPES, RESIZES, Resources, Settings

# Bump when a change in pipelines/ changes the tokens of an unchanged encoder and settings (2: frames are turned
# upright by the display matrix).
TRANSFORM_VERSION = "2"
# What a bad input raises while being read: it fails that item only. Anything else (a ValueError or KeyError from
# our own code, any error of an encoder) is a bug: it stops the job with its traceback instead of failing every item.
INPUT_ERRORS = (ItemError, *DECODE_ERRORS, zipfile.BadZipFile)
ALREADY_COMMITTED = "already committed"
# A committed item stored before source identities were recorded: kept, since a change cannot be told.
UNRECORDED = "already committed, with no source identity recorded (stored by an older version): kept unchecked"
SOURCE_CHANGED = "its source changed since it was stored"
CLAIMED = "claimed by another writer, or committed meanwhile"
# The store's disk refusing writes (full, read-only, no permission) stops the job with that error. Raised inside a
# Ray task it would reach the driver wrapped in Ray Data's UserCodeException, which drops it, so the tasks hand it
# over as a "stopped" status row and the driver raises it again (jobs/cli.py prints it in one line).
STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
STOPPED = "stopped"


@dataclass
class Prepared:
    inputs: np.ndarray  # [N, *InputSpec.shape] of the encoder
    t_start: np.ndarray  # [N] seconds
    t_end: np.ndarray
    extras: dict = field(default_factory=dict)  # name -> [N, ...]
    plan: dict | None = None  # frames for the encoder actor to decode (pipelines/nvdec.py); inputs are then empty


def _video_bytes(item: dict) -> bytes | None:
    value = item["video_bytes"]
    return value if isinstance(value, bytes) else None  # Ray Data hands a column of None over as NaN


def _video_source(item: dict) -> str:
    return item["video"] or ("video bytes" if _video_bytes(item) is not None else "no video")


def _video(item: dict):
    if item["video"]:
        return item["video"]
    if _video_bytes(item) is None:
        raise ItemError("the item has no video")
    return _video_bytes(item)


def prepare_video(item: dict, settings: Settings, inputs: InputSpec, gpu_decode: bool = False) -> Prepared:
    """A video file, or a frame folder read as a clip at one frame per second (pipelines/media.py). With
    `gpu_decode`, a file the GPU can decode is only planned here (its frames' times, from its packets)."""
    pick = partial(uniform_frames, n=settings.frames)
    if gpu_decode:
        plan, t = gpu_decode_plan(_video(item), pick, inputs.size)
        if plan:
            return Prepared(inputs.empty(), t, t, plan=plan)
    frames, t = read_frames(_video(item), pick, inputs.size, folders=True, resize=settings.resize)
    return Prepared(frames, t, t)


def prepare_hfr(item: dict, settings: Settings, inputs: InputSpec) -> Prepared:
    frames, t = read_frames(_video(item), partial(rate_frames, fps=settings.hfr_fps), inputs.size,
                            resize=settings.resize)
    return Prepared(frames, t, t)


def prepare_audio(item: dict, settings: Settings, inputs: InputSpec) -> Prepared:
    fbank, t_start, t_end = settings.audio(*read_audio(_video(item)))
    return Prepared(fbank, t_start, t_end)


def prepare_exo(item: dict, settings: Settings, inputs: InputSpec) -> Prepared:
    frames, times, views = [], [], []
    for view in json.loads(item["exo"]):
        try:
            f, t = read_frames(view["path"], partial(uniform_frames, n=settings.frames), inputs.size,
                               resize=settings.resize)
        except INPUT_ERRORS as e:
            raise ItemError(f"exo view {view['view']} ({view['path']}): {e}") from e
        frames.append(f)
        times.append(t + view["offset_s"])
        views.append(np.full(len(t), view["view"], np.int32))
    times, views = np.concatenate(times), np.concatenate(views)
    order = np.lexsort((views, times))
    return Prepared(np.concatenate(frames)[order], times[order], times[order], {"view": views[order]})


def read_rgbd(path: str) -> tuple[np.ndarray, ...]:
    """(color, depth, intrinsics, poses, times) of an RGB-D .npz file; a file that is not one is an ItemError."""
    try:
        with np.load(path) as rgbd:
            color, depth, intrinsics, poses, times = (rgbd[k] for k in ("color", "depth", "intrinsics", "poses", "times"))
    except (ValueError, KeyError) as e:  # pickled or not an .npz (ValueError), an array missing (KeyError)
        raise ItemError(f"not an RGB-D .npz with color, depth, intrinsics, poses and times: {e}") from e
    n, size = len(times), color.shape[1:3]
    expected = {"color": (n, *size, 3), "depth": (n, *size), "intrinsics": (3, 3), "poses": (n, 4, 4)}
    arrays = {"color": color, "depth": depth, "intrinsics": intrinsics, "poses": poses}
    if bad := [f"{k} {arrays[k].shape} (expected {shape})" for k, shape in expected.items() if arrays[k].shape != shape]:
        raise ItemError(f"RGB-D arrays do not fit {n} views: {', '.join(bad)}")
    return color, depth, intrinsics, poses, times


def prepare_3d(item: dict, settings: Settings, inputs: InputSpec) -> Prepared:
    color, depth, intrinsics, poses, times = read_rgbd(item["rgbd"])
    patches = [view_patches(c, d, intrinsics, p, settings.grid_3d) for c, d, p in zip(color, depth, poses)]
    xyz, rgb, coverage = (np.stack(parts).astype(np.float32) for parts in zip(*patches))
    order = np.argsort(times, kind="stable")
    summaries = np.concatenate([xyz, rgb, coverage[..., None]], -1)
    t = times[order].astype(np.float64)
    extras = {"pose": poses[order].astype(np.float64), "xyz": xyz[order], "coverage": coverage[order]}
    return Prepared(summaries[order], t, t, extras)


@dataclass(frozen=True)
class Modality:
    name: str
    encoder: Callable  # (path | None, Settings) -> encoder module (pipelines/encoders.py)
    prepare: Callable  # (item, Settings, encoder.inputs) -> Prepared; raises INPUT_ERRORS for a bad input
    params: Callable  # Settings -> the preprocessing parameters that define the tokens (fingerprint, attrs)
    time_kind: str  # "frame": t_start == t_end == the frame's time; "span": the step covers [t_start, t_end]
    extras: Callable = lambda settings: {}  # Settings -> {name: (trailing shape, numpy dtype)}
    missing: Callable = lambda item: ""  # why the item has no input for this modality ("" when it has one)
    source: Callable = _video_source  # what prepare reads, named in failure reasons
    inputs: Callable = lambda item: [_video(item)]  # the files (or bytes) prepare reads, for their identity
    gpu_decodable: bool = False  # prepare takes gpu_decode (see prepare_video)

    def schema_and_fingerprint(self, settings: Settings, encoder):
        params = {**self.params(settings), **encoder.params()}
        if settings.encoder_dtype != "float32":  # absent at the default: versions written before it keep their ids
            params["encoder_dtype"] = settings.encoder_dtype
        attrs = {"time_kind": self.time_kind, "encoder": encoder.name, **params}
        schema = TokenSchema(self.name, encoder.tokens_per_step, encoder.dim, settings.dtype,
                             self.extras(settings), attrs)
        fp = fingerprint(encoder.name, weights_digest(encoder), params, settings.dtype,
                         f"{self.name}/{TRANSFORM_VERSION}")
        return schema, fp


def _vision(pool: str):
    return lambda path, s: vision_encoder(path, pool, s.vision_layer, s.seed)


VIDEO_POOL = {"full": "full", "pooled": "half"}  # Settings.video_tokens -> VisionTokens pool


def _main_video(path, settings: Settings):
    return vision_encoder(path, VIDEO_POOL[settings.video_tokens], settings.vision_layer, settings.seed)


MODALITIES = {
    "video": Modality("video", _main_video, prepare_video, lambda s: {"frames": s.frames, "resize": s.resize}, "frame",
                      gpu_decodable=True),
    "audio": Modality("audio", lambda path, s: audio_encoder(path, s.audio, s.seed), prepare_audio,
                      lambda s: s.audio.params(), "span"),
    "hfr": Modality("hfr", _vision("2x2"), prepare_hfr, lambda s: {"fps": s.hfr_fps, "resize": s.resize}, "frame"),
    "exo": Modality("exo", _vision("half"), prepare_exo,
                    lambda s: {"frames_per_view": s.frames, "resize": s.resize}, "frame",
                    extras=lambda s: {"view": ((), "int32")},
                    missing=lambda item: "" if json.loads(item["exo"]) else "no exo views listed",
                    source=lambda item: "exo views", inputs=lambda item: [v["path"] for v in json.loads(item["exo"])]),
    "3d": Modality("3d", lambda path, s: point_encoder(path, s.grid_3d, s.seed), prepare_3d,
                   lambda s: {"grid": s.grid_3d}, "frame",
                   extras=lambda s: {"pose": ((4, 4), "float64"), "xyz": ((s.grid_3d**2, 3), "float32"),
                                     "coverage": ((s.grid_3d**2,), "float32")},
                   missing=lambda item: "" if item["rgbd"] else "no rgbd input listed",
                   source=lambda item: item["rgbd"], inputs=lambda item: [item["rgbd"]]),
}


def _rows(batch: dict) -> list[dict]:
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def stored_reason(item: dict, modality: Modality, recorded: list[dict] | None) -> str:
    """Why a committed item is skipped, or SOURCE_CHANGED when its source is no longer the one it was made from."""
    if recorded is None:
        return UNRECORDED
    try:
        return ALREADY_COMMITTED if unchanged(recorded, modality.inputs(item)) else SOURCE_CHANGED
    except (OSError, ItemError):  # the source is gone or unreadable now: what is stored stays, as before
        return ALREADY_COMMITTED


def prepare_batch(batch: dict, modality: Modality, settings: Settings, inputs: InputSpec, version: Version,
                  owner: str, lease_s: float, done: dict, gpu_decode: bool = False) -> dict:
    """Ray Data task: status rows for a batch of items, with the encoder inputs (or decode plans) of those this job
    now owns. `done`: committed item -> its recorded source identity (None: not recorded); a committed item whose
    source changed is encoded again, and its new commit supersedes the old one."""
    options = {"gpu_decode": True} if gpu_decode and modality.gpu_decodable else {}
    items = _rows(batch)
    skip = [modality.missing(item) if item["id"] not in done or item["problem"]
            else stored_reason(item, modality, done[item["id"]]) for item in items]
    changed = {item["id"] for item, reason in zip(items, skip) if reason == SOURCE_CHANGED}
    skip = ["" if reason == SOURCE_CHANGED else reason for reason in skip]
    wanted = [item["id"] for item, reason in zip(items, skip) if not item["problem"] and not reason]
    try:
        granted = set(version.claim(wanted, owner, lease_s, again=changed)) if wanted else set()
    except OSError as e:
        if e.errno not in STORE_ERRNOS:
            raise
        granted, skip = set(), [_stopped(e)] * len(items)
    empty_extras = {name: np.zeros((0, *shape), dtype) for name, (shape, dtype) in version.schema.extras.items()}
    rows = []
    for item, reason in zip(items, skip):
        video_id, status, source = item["id"], "skipped", ""
        prepared = Prepared(inputs.empty(), np.zeros(0), np.zeros(0), empty_extras)
        started = time.perf_counter()
        if reason.startswith(STOPPED):
            status = STOPPED
        elif item["problem"]:  # a bad id, or an id of several inputs (sources.py): fails whatever the store holds
            status, reason = "failed", item["problem"]
        elif not reason and video_id not in granted:
            reason = CLAIMED
        elif not reason:
            try:  # the identity first: a change while it is read makes the next run encode it again
                source = json.dumps([identity(s) for s in modality.inputs(item)])
                prepared, status = modality.prepare(item, settings, inputs, **options), "todo"
                reason = SOURCE_CHANGED if video_id in changed else ""
            except INPUT_ERRORS as e:
                status, reason = "failed", f"{modality.name} of {video_id!r} ({modality.source(item)}): {e}"
                if video_id in changed:
                    reason += f"; {SOURCE_CHANGED}, and the rows stored from its earlier source are withdrawn"
        if prepared.plan:  # named as prepare names a failing item, for a failure in the actor
            prepared.plan["item"] = f"{modality.name} of {video_id!r} ({modality.source(item)})"
        rows.append({"id": video_id, "status": status, "reason": reason, "inputs": prepared.inputs,
                     "source": source, "supersedes": video_id in changed and video_id in granted,
                     "plan": json.dumps(prepared.plan) if prepared.plan else "",
                     "t_start": prepared.t_start, "t_end": prepared.t_end, "decode_s": time.perf_counter() - started,
                     **{f"x_{name}": prepared.extras[name] for name in empty_extras}})
    columns = ["id", "status", "reason", "inputs", "source", "supersedes", "plan", "t_start", "t_end", "decode_s",
               *(f"x_{name}" for name in empty_extras)]
    return {key: [row[key] for row in rows] for key in columns}


def _stopped(e: OSError) -> str:
    """The reason of a "stopped" status row: the store's error, for the driver to raise again."""
    return f"{STOPPED} {json.dumps([e.errno, e.strerror, e.filename])}"


def write_part(batch: dict, version: Version, owner: str) -> dict:
    """Ray Data task: the batch's finished items as one part (and its failures), then one status row per item."""
    status, reason = list(batch["status"]), list(batch["reason"])
    try:
        _write(batch, version, owner, status, reason)
    except OSError as e:
        if e.errno not in STORE_ERRNOS:
            raise
        status, reason = [STOPPED] * len(status), [_stopped(e)] * len(status)
    return {"id": batch["id"], "status": np.array(status), "reason": np.array(reason),
            "decode_s": batch["decode_s"], "encode_s": batch["encode_s"]}


def _write(batch: dict, version: Version, owner: str, status: list, reason: list) -> None:
    """write_part's writing; sets each item's `status` and `reason` as it goes."""
    # Ray retries a task whose node was lost, also one whose commit record had landed: an item already committed
    # from this same source is that earlier attempt's work (ok, not written twice); one committed by another job
    # meanwhile is skipped, unless this row supersedes it.
    stored = version.index(fresh=True).sources
    with version.writer(owner) as writer:
        recorded = set()  # the rows of a duplicate id fail with one reason, recorded once
        for k, row in enumerate(_rows(batch)):
            if status[k] == "todo" and row["id"] in stored:
                if stored[row["id"]] == json.loads(row["source"]):
                    status[k] = "ok"
                elif not row["supersedes"]:
                    status[k], reason[k] = "skipped", ALREADY_COMMITTED
            if status[k] == "todo":
                extras = {name: row[f"x_{name}"] for name in version.schema.extras}
                try:
                    writer.add(row["id"], row["tokens"], row["t_start"], row["t_end"], source=json.loads(row["source"]),
                               supersedes=bool(row["supersedes"]), **extras)
                    status[k] = "ok"
                except FeatureError as e:  # e.g. non-finite tokens: the item fails, its batch goes on
                    status[k], reason[k] = "failed", str(e)
            # An id that breaks the id rule cannot be recorded in the store: the summary alone reports it.
            if status[k] == "failed" and row["id"] not in recorded and not id_problem(row["id"]):
                writer.fail(row["id"], reason[k], supersedes=bool(row["supersedes"]))
                recorded.add(row["id"])
    # Hand the claims back (a zero lease): a failed item is not done, so that the next run, whoever runs it, retries
    # it at once; a committed one, so that a run that finds its source changed may take it at once.
    written = [video_id for video_id, s in zip(batch["id"], status) if s in ("ok", "failed")]
    if written:
        version.claim(written, owner, lease_s=0, again=written)


def materialize_modality(items: ray.data.Dataset, modality: Modality, encoder_path: str | None, store: FeatureStore,
                         settings: Settings, resources: Resources, owner: str, num_gpus: float,
                         gpu_decode: bool = False) -> tuple[Version, ray.data.Dataset]:
    """The version one modality's job over `items` writes, and the job's status rows (lazy: nothing runs until
    they are consumed).

    The encoder is built here once for its fingerprint and shapes, and again in each actor: models are shipped as
    recipes (path or seed), not pickled. On a CPU-only cluster Ray fuses prepare into the encoder actors (same
    resources: each actor decodes, then encodes); with GPUs, CPU tasks decode while GPU actors encode, or, with
    `gpu_decode`, CPU tasks plan and GPU actors decode (NVDEC) and encode."""
    build = partial(modality.encoder, encoder_path, settings)
    encoder = build()
    version = store.create_version(*modality.schema_and_fingerprint(settings, encoder))
    done = version.sources()  # resume: items done before are skipped without decoding, unless their source changed
    return version, (
        items.map_batches(
            prepare_batch, batch_size=resources.prepare_batch,
            compute=ray.data.TaskPoolStrategy(size=resources.prepare_concurrency),
            fn_kwargs=dict(modality=modality, settings=settings, inputs=encoder.inputs, version=version,
                           owner=owner, lease_s=resources.lease_s, done=done, gpu_decode=gpu_decode),
        )
        .map_batches(
            Encode, batch_size=resources.batch_size, num_gpus=num_gpus, num_cpus=resources.encoder_cpus,
            compute=_actor_pool(resources.concurrency, resources.calls_per_actor),
            fn_constructor_kwargs=dict(build=build, digest=version.fingerprint.spec["weights_digest"],
                                       dtype=settings.dtype, rows_per_forward=resources.rows_per_forward,
                                       compute_dtype=settings.encoder_dtype),
        )
        .map_batches(write_part, batch_size=resources.part_items, fn_kwargs=dict(version=version, owner=owner))
    )


def actor_gpus(resources: Resources) -> float:
    """GPUs per encoder actor: Resources.num_gpus, by default 1 when the cluster has GPUs, else 0."""
    if resources.num_gpus is not None:
        return resources.num_gpus
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def decode_on_gpus(settings: Settings, resources: Resources, num_gpus: float) -> bool:
    """Whether the encoder actors decode the main video (Resources.decoder); a choice that cannot hold is an error.
    PyNvVideoCodec is looked for here, on the driver; an actor whose node lacks it decodes with PyAV and warns."""
    if resources.decoder == "nvdec":
        if settings.resize != "torch-bicubic":
            raise ValueError("decoder 'nvdec' needs resize 'torch-bicubic' (swscale resizes on the CPU, after PyAV)")
        if not num_gpus:
            raise ValueError("decoder 'nvdec' needs GPU encoder actors, and this cluster has no GPUs (use 'pyav')")
        if not nvdec_installed():
            raise ValueError("decoder 'nvdec' needs PyNvVideoCodec (pip install 'pave-engine[gpu]')")
        return True
    return resources.decoder == "auto" and settings.resize == "torch-bicubic" and bool(num_gpus) and nvdec_installed()


def check_settings(settings: Settings, resources: Resources) -> None:
    """ValueError naming the first setting that cannot run (as its command-line flag is spelled)."""
    for name, value, known in (("resize", settings.resize, RESIZES), ("decoder", resources.decoder, DECODERS),
                               ("encoder_dtype", settings.encoder_dtype, ENCODER_DTYPES)):
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
    concurrency = resources.concurrency if isinstance(resources.concurrency, tuple) else (resources.concurrency,)
    counts = {"frames": settings.frames, "grid-3d": settings.grid_3d, "batch-size": resources.batch_size,
              "part-items": resources.part_items, "prepare-batch": resources.prepare_batch,
              "concurrency": min(concurrency), "calls-per-actor": resources.calls_per_actor}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name, value in (("hfr-fps", settings.hfr_fps), ("lease-s", resources.lease_s)):
        if not value > 0:
            raise ValueError(f"{name} must be above 0, got {value:g}")
    if len(concurrency) == 2 and concurrency[0] > concurrency[1]:
        raise ValueError(f"concurrency {concurrency[0]},{concurrency[1]}: the minimum is above the maximum")


def _actor_pool(concurrency: int | tuple[int, int], calls_per_actor: int) -> ray.data.ActorPoolStrategy:
    sizes = dict(size=concurrency) if isinstance(concurrency, int) else dict(min_size=concurrency[0],
                                                                               max_size=concurrency[1])
    return ray.data.ActorPoolStrategy(**sizes, max_concurrent_calls_per_actor=calls_per_actor,
                                      enable_true_multi_threading=calls_per_actor > 1)


@dataclass
class Summary:
    counts: dict[str, dict[str, int]]  # modality -> {"ok", "failed", "skipped"} item counts
    failures: dict[str, dict[str, str]]  # modality -> item -> reason
    versions: dict[str, str]  # modality -> fingerprint id written
    seconds: float
    held: dict[str, int] = field(default_factory=dict)  # modality -> items skipped as committed before or claimed
    # modality -> {"seconds": the job's wall time, "decode_s" / "encode_s": summed over its tasks / actors}
    timing: dict[str, dict[str, float]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)  # modality -> items re-encoded: their source changed
    unrecorded: dict[str, int] = field(default_factory=dict)  # modality -> committed items kept with no identity
    notes: list[str] = field(default_factory=list)  # about the input as a whole (files a folder input does not read)

    def stored_nothing(self) -> list[str]:
        """Modalities of which this job stored no item while none was done before or by another job."""
        return [name for name, c in self.counts.items() if c["ok"] == 0 and not self.held.get(name)]

    def exit_code(self, strict: bool = False) -> int:
        """1 when a requested modality stored nothing (or, strict, when any item failed), else 0."""
        failed = sum(c["failed"] for c in self.counts.values())
        return int(bool(self.stored_nothing()) or (strict and failed > 0))

    def table(self) -> str:
        """Per modality: item counts, items stored per second, decode and encode seconds (summed over tasks and
        actors: where the time goes); then the failures grouped by reason, and what stored nothing."""
        lines = [f"{'modality':<8} {'version':<16} {'ok':>6} {'failed':>6} {'skipped':>7} {'items/s':>8} "
                 f"{'decode s':>9} {'encode s':>9}"]
        for name, c in self.counts.items():
            t = self.timing[name]
            rate = c["ok"] / t["seconds"] if t["seconds"] else 0.0
            lines.append(f"{name:<8} {self.versions[name]:<16} {c['ok']:>6} {c['failed']:>6} {c['skipped']:>7} "
                         f"{rate:>8.2f} {t['decode_s']:>9.1f} {t['encode_s']:>9.1f}")
        for name, failed in self.failures.items():
            groups = {}
            for video_id, reason in sorted(failed.items()):
                groups.setdefault(failure_kind(video_id, reason), []).append(video_id)
            for kind, ids in sorted(groups.items(), key=lambda group: -len(group[1])):
                lines.append(f"FAILED {name} x{len(ids)}: {kind}  [{_shown(ids)}]")
        for name, ids in self.changed.items():
            if ids:
                lines.append(f"RE-ENCODED {name} x{len(ids)}: {SOURCE_CHANGED}  [{_shown(sorted(ids))}]")
        for name, n in self.unrecorded.items():
            if n:
                lines.append(f"note: {name}: {n} item(s) stored before source identities were recorded are kept "
                             "unchecked (a change of their source cannot be seen)")
        lines += [f"NOTHING STORED for {name}: no item gave {name} tokens" for name in self.stored_nothing()]
        lines += self.notes
        return "\n".join(lines + [f"{self.seconds:.1f}s"])


FAILED_IDS_SHOWN = 8  # per reason in the table; --summary-json has every item with its own reason


def _shown(ids: list[str]) -> str:
    return ", ".join(ids[:FAILED_IDS_SHOWN]) + (", ..." if len(ids) > FAILED_IDS_SHOWN else "")


def failure_kind(video_id: str, reason: str) -> str:
    """A failure's reason with what names the item (its quoted id, its source, file paths) taken out, so that items
    failing for the same cause group together."""
    named = re.match(rf"\w+ of {re.escape(repr(video_id))} \((.*?)\): ", reason)
    if named:
        reason = reason[named.end():].replace(named.group(1), "<source>")
    reason = reason.replace(repr(video_id), "'<id>'")
    reason = re.sub(r"'[^']*/[^']*'", "'<path>'", reason)  # quoted paths may hold spaces
    return re.sub(r"(?<![\w<])/[^\s'\",()]+", "<path>", reason)


def materialize(items: ray.data.Dataset, store_url: str, modalities=("video",), encoder_paths: dict | None = None,
                settings: Settings = Settings(), resources: Resources = Resources(),
                owner: str | None = None, storage_options: dict | None = None) -> Summary:
    """Materialize `modalities` of `items` into the store at `store_url` (fsspec `storage_options` for a URL: they
    travel with the store to every task and actor), one version per (modality, fingerprint);
    `encoder_paths` maps a modality to a local HF directory (absent: tiny untrained encoder). Items already
    committed in a version are skipped; failed ones are retried.

    `owner` names this job in item claims (default: unique per call). Claims keep concurrent jobs off each other's
    items. A job that stops on an error hands its claims back; after a crash that leaves no chance to (SIGKILL, a
    lost node), a restart under the same owner takes its items back at once, under a new owner it waits
    `resources.lease_s` for the dead job's claims to expire (its items count as skipped meanwhile)."""
    start = time.perf_counter()
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}")
    check_settings(settings, resources)
    encoder_paths = encoder_paths or {}
    store, owner = FeatureStore(store_url, storage_options), owner or f"materialize-{uuid.uuid4().hex[:12]}"
    num_gpus = actor_gpus(resources)
    gpu_decode = decode_on_gpus(settings, resources, num_gpus)
    counts, failures, versions, held, timing, changed, unrecorded = {}, {}, {}, {}, {}, {}, {}
    for name in modalities:
        started = time.perf_counter()
        version, rows = materialize_modality(items, MODALITIES[name], encoder_paths.get(name), store, settings,
                                             resources, owner, num_gpus, gpu_decode)
        versions[name] = version.fingerprint.id
        counts[name] = {"ok": 0, "failed": 0, "skipped": 0}
        failures[name], held[name], changed[name], unrecorded[name] = {}, 0, [], 0
        timing[name] = {"decode_s": 0.0, "encode_s": 0.0}
        try:
            for row in rows.iter_rows():
                if row["status"] == STOPPED:
                    raise OSError(*json.loads(row["reason"][len(STOPPED):]))
                counts[name][row["status"]] += 1
                timing[name]["decode_s"] += row["decode_s"]
                timing[name]["encode_s"] += row["encode_s"]
                held[name] += row["reason"] in (ALREADY_COMMITTED, UNRECORDED, CLAIMED)
                unrecorded[name] += row["reason"] == UNRECORDED
                if row["status"] == "ok" and row["reason"] == SOURCE_CHANGED:
                    changed[name].append(row["id"])
                if row["status"] == "failed":
                    failures[name][row["id"]] = row["reason"]
        except BaseException:
            # The job stops (an encoder's error, Ctrl-C): hand back the claims it holds on items it did not commit, so
            # that a rerun under any owner does them at once instead of skipping them until the leases run out.
            version.release(owner)
            raise
        timing[name]["seconds"] = time.perf_counter() - started
    return Summary(counts, failures, versions, time.perf_counter() - start, held, timing, changed, unrecorded)
