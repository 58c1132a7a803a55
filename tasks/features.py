"""The side-channel features the PAVE authors released, imported into a feature store as versions of their own
(`pave store import KIND DIR... --store STORE`), so that a user trains on them without extracting them again. Each
kind knows its files' layout and how they were made, and the timestamps follow from that
(docs/PAPER_TASKS.md §1(e), §3(e), §5(e), with the official file for each fact):

- imagebind-audio (Music-AVQA, AVSD): `{id}.pt` per clip, (K, 1024) bf16, K = int(duration) - 1 ImageBind-huge
  vectors of 2 s windows every 1 s from 0 -> audio tokens [K, 1, 1024]; row k spans [k, k + 2] s.
- llava-3d (ScanQA, SQA3D): `{scene_id}/video_features.pt`, (1, 18432, 1024) = 32 views x 24 x 24 patches ->
  3d tokens [32, 576, 1024]; view k at k s: the time of frame k of the scene's frame folder, which `pave
  materialize` reads as a clip at one frame per second (pipelines/media.py), so frame k's neighbourhood is view k,
  as the official code's chunk k is.
- languagebind (LLaVA-Video-178K): `{path}.pt` per video, (n, 5, 1024) fp16 = [CLS, 2 x 2 pooled patches] of n
  frames taken by linspace over the whole video -> hfr tokens [n, 4, 1024], CLS dropped as the official loader
  drops it; frame k at the time of frame index round(k (F - 1) / (n - 1)) of the video's F frames. That needs the
  videos: `--manifest` (the one `pave data convert` writes) maps each id to its video, probed with PyAV.

A file's id is its path under DIR without `.pt` (llava-3d: the scene folder's name), which is how `pave data
convert` names the store items of these tasks. The version's fingerprint names the release (kind and the model
that made it), not the folder, so the Real and Synthetic folders of Music-AVQA land in one version. A rerun skips
committed items; files that cannot be used become failure rows naming the file and the reason.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.sources import manifest_videos
from tasks.common import TaskDataError

IMPORT_VERSION = "1"


@dataclass(frozen=True)
class Release:
    modality: str
    model: str  # what made the features (the fingerprint's encoder)
    tokens_per_step: int
    attrs: dict  # how they were made: the schema's attrs
    files: Callable  # DIR -> {id: file}
    rows: Callable  # (loaded tensor, item) -> (tokens [N, tokens_per_step, D], t_start [N], t_end [N])
    needs_video: bool = False
    layout: str = "*.pt files"  # what `files` takes, for messages


def pt_files(directory: Path) -> dict[str, Path]:
    return {str(p.relative_to(directory).with_suffix("")): p for p in sorted(directory.rglob("*.pt"))}


def scene_files(directory: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(directory.glob("*/video_features.pt"))}


def shape_error(tensor, expected: str) -> str:
    return f"shape {tuple(tensor.shape)}, expected {expected}"


def imagebind_rows(tensor, item: dict):
    if tensor.ndim != 2 or tensor.shape[0] < 1:
        raise ValueError(shape_error(tensor, "(K >= 1, D): one vector per 2 s window"))
    starts = np.arange(len(tensor), dtype=np.float64)
    return tensor[:, None, :], starts, starts + 2.0


def llava3d_rows(tensor, item: dict):
    if tensor.ndim != 3 or tensor.shape[0] != 1 or tensor.shape[1] % 576:
        raise ValueError(shape_error(tensor, "(1, views x 576, D): 24 x 24 patches per view"))
    views = tensor.shape[1] // 576
    times = np.arange(views, dtype=np.float64)
    return tensor.reshape(views, 576, tensor.shape[2]), times, times


def languagebind_rows(tensor, item: dict):
    if tensor.ndim != 3 or tensor.shape[1] != 5 or tensor.shape[0] < 1:
        raise ValueError(shape_error(tensor, "(n, 5, D): CLS + 2 x 2 pooled patches per frame"))
    import av

    from pipelines.media import ItemError, index_frames, open_media

    try:
        with open_media(item["video"]) as container:
            times = index_frames(container, container.streams.video[0]).times  # every frame's time, seconds
    except (ItemError, IndexError, av.error.FFmpegError) as err:
        raise ValueError(f"its video {item['video']}: {err or 'no video stream'}") from None
    n = len(tensor)
    picked = np.round(np.arange(n) * (len(times) - 1) / max(n - 1, 1)).astype(int)
    return tensor[:, 1:, :], times[picked], times[picked]


RELEASES = {
    "imagebind-audio": Release("audio", "ImageBind-huge audio (PAVE release)", 1,
                               {"time_kind": "span", "window_s": 2.0, "hop_s": 1.0, "sample_rate": 16000},
                               pt_files, imagebind_rows),
    "llava-3d": Release("3d", "LLaVA-3D scene features (PAVE release)", 576,
                        {"time_kind": "frame", "grid": 24, "view_time": "frame index, 1 s apart"},
                        scene_files, llava3d_rows, layout="{scene_id}/video_features.pt"),
    "languagebind": Release("hfr", "LanguageBind video tower of Video-LLaVA-7B (PAVE release)", 4,
                            {"time_kind": "frame", "pool": "2x2", "cls": "dropped"}, pt_files, languagebind_rows,
                            needs_video=True),
}


def release(kind: str) -> Release:
    if kind not in RELEASES:
        raise TaskDataError(f"unknown feature release {kind!r}; one of {', '.join(RELEASES)}")
    return RELEASES[kind]


def load_tensor(path: Path):
    """The tensor the file holds; ValueError with a one-line reason when it holds none."""
    import torch

    if path.stat().st_size == 0:
        raise ValueError("zero-length file")
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # cut or foreign bytes fail inside torch/pickle/zip in many ways, all about the file
        while err.__cause__ or err.__context__:  # the innermost says what is wrong with the bytes
            err = err.__cause__ or err.__context__
        lines = str(err).strip().splitlines()
        raise ValueError(f"not a readable torch file ({type(err).__name__}: {lines[0] if lines else '-'})") from None
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"holds a {type(tensor).__name__}, not a tensor")
    return tensor


def listing(kind: str, directories: list[Path], manifest: Path | None) -> tuple[list[dict], list[Path]]:
    """One item per feature file of the release under `directories`: id, file, video (for kinds that need one); and
    the other files there, which are not the release's (e.g. `.npy`: the releases are torch files, and an array
    file says nothing of the dtype and layout the release's conventions need). TaskDataError when a folder holds
    no feature file, or ids repeat across folders."""
    spec = release(kind)
    if spec.needs_video and manifest is None:
        raise TaskDataError(f"{kind} features need --manifest (the one `pave data convert` writes): their frame "
                            "times come from the videos")
    videos = manifest_videos(manifest) if manifest else {}
    items, seen, others = [], {}, []
    for directory in directories:
        if not directory.is_dir():
            raise TaskDataError(f"{directory}: no such folder; give the folder the release was unpacked into")
        files = spec.files(directory)
        if not files:
            raise TaskDataError(f"{directory}: no {spec.layout} there; is it the unpacked {kind} release?")
        for item_id, path in files.items():
            if item_id in seen:
                raise TaskDataError(f"id {item_id!r} is in {seen[item_id]} and {path}; import one of them")
            seen[item_id] = path
            items.append({"id": item_id, "file": str(path), "video": videos.get(item_id, "")})
        taken = set(files.values())
        others += [p for p in sorted(directory.rglob("*")) if p.is_file() and p not in taken
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts)]
    return items, others


def write_batch(batch: dict, kind: str, version, dtype: str) -> dict:
    """Ray Data task: the batch's files as one part of `version`, failures recorded; one status row per item."""
    spec, reasons = release(kind), []
    with version.writer() as writer:
        for item in (dict(zip(batch, values)) for values in zip(*batch.values())):
            try:
                if spec.needs_video and not item["video"]:
                    raise ValueError("no video for this id in --manifest, to time its frames by")
                tensor = load_tensor(Path(item["file"]))
                if str(tensor.dtype).removeprefix("torch.") != dtype:
                    raise ValueError(f"dtype {tensor.dtype}, the release's first readable file is {dtype}")
                tokens, t_start, t_end = spec.rows(tensor, item)
                writer.add(item["id"], tokens.contiguous(), t_start, t_end)
                reasons.append("")
            except (ValueError, RuntimeError, OSError) as err:
                reason = f"{kind} {item['file']}: {err}"
                writer.fail(item["id"], reason)
                reasons.append(reason)
    return {"id": batch["id"], "reason": np.array(reasons, dtype=object)}


@dataclass
class ImportSummary:
    version: str
    imported: int
    skipped: int  # committed before
    failures: dict[str, str]

    def line(self, kind: str) -> str:
        return (f"{kind}: {self.imported} imported, {self.skipped} already there, {len(self.failures)} failed "
                f"-> version {self.version}")


def _first_tensor(kind: str, items: list[dict]):
    """The first file's tensor that loads, which sets the version's dtype and width: files before it that do not
    load become failure rows with the rest (write_batch). TaskDataError when none loads."""
    for item in items:
        try:
            return load_tensor(Path(item["file"]))
        except (ValueError, OSError) as err:
            reason = f"{item['file']}: {err}"
    raise TaskDataError(f"none of the {len(items)} {kind} files holds a readable tensor (the last: {reason}); is it "
                        "the unpacked release?")


def import_release(kind: str, items: list[dict], store_url: str, part_items: int = 64,
                   storage_options: dict | None = None) -> ImportSummary:
    """Import the release's files `items` (listing()) into the store at `store_url` (fsspec `storage_options` for a
    URL; a Ray Data job, one part per `part_items` files); the caller initialises Ray."""
    import ray

    from featurestore import FeatureStore, TokenSchema, fingerprint

    spec = release(kind)
    first = _first_tensor(kind, items)
    dtype, dim = str(first.dtype).removeprefix("torch."), first.shape[-1]
    schema = TokenSchema(spec.modality, spec.tokens_per_step, dim, dtype, attrs={**spec.attrs, "encoder": spec.model})
    fp = fingerprint(spec.model, f"release:{kind}", spec.attrs, dtype, f"import/{kind}/{IMPORT_VERSION}")
    version = FeatureStore(store_url, storage_options).create_version(schema, fp)
    done = version.committed_items()
    todo = [item for item in items if item["id"] not in done]
    failures = {}
    if todo:
        rows = ray.data.from_items(todo).map_batches(write_batch, batch_size=part_items,
                                                      fn_kwargs=dict(kind=kind, version=version, dtype=dtype))
        failures = {row["id"]: row["reason"] for row in rows.iter_rows() if row["reason"]}
    return ImportSummary(fp.id, len(todo) - len(failures), len(items) - len(todo), failures)

