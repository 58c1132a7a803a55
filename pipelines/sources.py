"""Inputs of a materialization job as one Ray Dataset of items, whatever the source:

- a directory of video files (its top level; the id is the file name without its suffix),
- a JSONL manifest, one item a line: {"id", "video", "exo": [{"view", "path", "offset_s"}], "rgbd"} with paths
  relative to the manifest's directory (the synthetic corpus's manifest.jsonl is one); "video" is a video file or
  a folder of frames (the 3D tasks' manifests: pipelines/media.py reads it at one frame per second),
- WebDataset tar shards (a .tar file or a directory of them): the video is the sample's video member, the rest of
  the item comes from its `json` member (a manifest row), whose paths are relative to `root` (default: the
  directory above the shards', the corpus layout).

Item columns: id, source (its input: a file, a manifest line, a shard and key), video (a path, or "" when the
bytes are in video_bytes), video_bytes (None when the item has no video), exo (JSON list of {"view", "path",
"offset_s"} with resolved paths), rgbd (a resolved path or ""), problem (why the item cannot be stored, naming its
input: its id breaks the id rule of featurestore/ids.py, or other inputs have the same id; "" for most).
Duplicate ids are found while listing, before any item is read: each input that has one is a problem (which one the
id means is the user's call), so none is written twice or dropped."""
import json
import os
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import ray

from featurestore import ID_RULE, id_problem

VIDEO_SUFFIXES = ("mp4", "mkv", "webm", "mov", "avi")
# WebDataset's sample key of a tar member: its path up to the first "." of the file name (ray.data.read_webdataset
# groups members by it).
WEBDATASET_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class SourceError(ValueError):
    """An --input that lists no items: a wrong path, an empty folder, a manifest line that is not JSON."""


def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise SourceError(f"{path} line {n}: not a JSON object ({err}); one item per line") from None
    return rows


def manifest_videos(path: str | Path) -> dict[str, str]:
    """id -> video path of a manifest's items that list a video, resolved as read_items resolves them."""
    base = str(Path(path).parent)
    return {str(row["id"]): _resolve(base, row["video"]) for _, row in _manifest_rows(Path(path))
            if isinstance(row, dict) and row.get("id") is not None and row.get("video")}


def read_items(source: str, root: str | None = None) -> ray.data.Dataset:
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        base = root or str(path.parent)
        return _listed([_manifest_item(row, base, f"{path} line {n}") for n, row in _manifest_rows(path)])
    tars = [path] if path.suffix == ".tar" else sorted(path.glob("*.tar")) if path.is_dir() else []
    if tars:
        base = root or str(tars[0].parent.parent)
        duplicates = _duplicates(_webdataset_ids(tars))
        return ray.data.read_webdataset([str(t) for t in tars]).map(
            _webdataset_item, fn_kwargs={"base": base, "duplicates": duplicates})
    if path.is_dir():
        videos = sorted(str(p) for p in path.iterdir() if p.suffix.lstrip(".").lower() in VIDEO_SUFFIXES)
        if not videos:
            raise SourceError(f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)}) and no .tar shards")
        return _listed([_item(Path(v).stem, v, video=v) for v in videos])
    raise SourceError(f"{source}: not a directory of videos or tar shards, a .tar, or a .jsonl manifest")


def _item(video_id: str, source: str, video: str = "", video_bytes: bytes | None = None, exo=(), rgbd: str = "") \
        -> dict:
    problem = id_problem(video_id)
    return {"id": video_id, "source": source, "video": video, "video_bytes": video_bytes, "exo": json.dumps(list(exo)),
            "rgbd": rgbd, "problem": f"{source}: id {video_id!r} {problem}; an item id is {ID_RULE}" if problem else ""}


def _flag_duplicate(item: dict, duplicates: dict[str, str]) -> dict:
    return {**item, "problem": item["problem"] or duplicates.get(item["id"], "")}


def _listed(items: list[dict]) -> ray.data.Dataset:
    duplicates = _duplicates([(item["id"], item["source"]) for item in items])
    return ray.data.from_items([_flag_duplicate(item, duplicates) for item in items])


def _duplicates(listing: list[tuple[str, str]]) -> dict[str, str]:
    """id -> its problem, for the ids that several (id, source) of `listing` share; the problem names them all."""
    sources = defaultdict(list)
    for video_id, source in listing:
        sources[video_id].append(source)
    return {video_id: f"duplicate id {video_id!r}: {' and '.join(found)} (one id per video: rename or remove all "
                      "but one)" for video_id, found in sources.items() if len(found) > 1}


def _webdataset_ids(tars: list[Path]) -> list[tuple[str, str]]:
    """(id, source) of every sample of the shards, as _webdataset_item makes them, from the tar headers and the
    json members only (the videos are not read)."""
    listing = []
    for tar in tars:
        with tarfile.open(tar) as archive:
            metas: dict[str, dict] = {}
            for member in archive:
                match = WEBDATASET_KEY.match(member.name) if member.isreg() else None
                if match:
                    meta = metas.setdefault(match[1], {})
                    if match[2] == "json":
                        meta.update(json.load(archive.extractfile(member)))
            listing += [(str(meta.get("id", key)), f"{tar}:{key}") for key, meta in metas.items()]
    return listing


def _resolve(base: str, path: str | None) -> str:
    return os.path.join(base, path) if path else ""


def _side_inputs(row: dict, base: str) -> dict:
    exo = [{**view, "path": _resolve(base, view["path"])} for view in row.get("exo") or ()]
    return {"exo": exo, "rgbd": _resolve(base, row.get("rgbd"))}


def _manifest_item(row: dict, base: str, source: str) -> dict:
    video_id = row.get("id")
    return _item("" if video_id is None else str(video_id), source, video=_resolve(base, row.get("video")),
                 **_side_inputs(row, base))


def _webdataset_item(sample: dict, base: str, duplicates: dict[str, str]) -> dict:
    meta = sample.get("json") or {}
    suffix = next((s for s in VIDEO_SUFFIXES if sample.get(s) is not None), None)
    item = _item(
        str(meta.get("id", sample["__key__"])),
        f"{sample['__url__']}:{sample['__key__']}",
        video_bytes=sample[suffix] if suffix else None,
        **_side_inputs(meta, base),
    )
    return _flag_duplicate(item, duplicates)
