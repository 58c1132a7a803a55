"""Inputs of a materialization job as one Ray Dataset of items, whatever the source:

- a directory of video files (its top level; the id is the file name without its suffix),
- a JSONL manifest, one item a line: {"id", "video", "exo": [{"view", "path", "offset_s"}], "rgbd"} with paths
  relative to the manifest's directory (the synthetic corpus's manifest.jsonl is one),
- WebDataset tar shards (a .tar file or a directory of them): the video is the sample's video member, the rest of
  the item comes from its `json` member (a manifest row), whose paths are relative to `root` (default: the
  directory above the shards', the corpus layout).

Item columns: id, video (a path, or "" when the bytes are in video_bytes), video_bytes (None when the item has
no video), exo (JSON list of {"view", "path", "offset_s"} with resolved paths), rgbd (a resolved path or "")."""
import json
import os
from pathlib import Path

import ray

VIDEO_SUFFIXES = ("mp4", "mkv", "webm", "mov", "avi")


def read_items(source: str, root: str | None = None) -> ray.data.Dataset:
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        base = root or str(path.parent)
        return ray.data.read_json(str(path), lines=True).map(_manifest_item, fn_kwargs={"base": base})
    tars = [path] if path.suffix == ".tar" else sorted(path.glob("*.tar")) if path.is_dir() else []
    if tars:
        base = root or str(tars[0].parent.parent)
        return ray.data.read_webdataset([str(t) for t in tars]).map(_webdataset_item, fn_kwargs={"base": base})
    if path.is_dir():
        videos = sorted(str(p) for p in path.iterdir() if p.suffix.lstrip(".").lower() in VIDEO_SUFFIXES)
        if not videos:
            raise FileNotFoundError(f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)}) and no .tar shards")
        return ray.data.from_items([_item(Path(v).stem, video=v) for v in videos])
    raise FileNotFoundError(f"{source}: not a directory of videos or tar shards, a .tar, or a .jsonl manifest")


def _item(video_id: str, video: str = "", video_bytes: bytes | None = None, exo=(), rgbd: str = "") -> dict:
    return {"id": video_id, "video": video, "video_bytes": video_bytes, "exo": json.dumps(list(exo)), "rgbd": rgbd}


def _resolve(base: str, path: str | None) -> str:
    return os.path.join(base, path) if path else ""


def _side_inputs(row: dict, base: str) -> dict:
    exo = [{**view, "path": _resolve(base, view["path"])} for view in row.get("exo") or ()]
    return {"exo": exo, "rgbd": _resolve(base, row.get("rgbd"))}


def _manifest_item(row: dict, base: str) -> dict:
    return _item(str(row["id"]), video=_resolve(base, row["video"]), **_side_inputs(row, base))


def _webdataset_item(sample: dict, base: str) -> dict:
    meta = sample.get("json") or {}
    suffix = next((s for s in VIDEO_SUFFIXES if sample.get(s) is not None), None)
    return _item(
        str(meta.get("id", sample["__key__"])),
        video_bytes=sample[suffix] if suffix else None,
        **_side_inputs(meta, base),
    )
