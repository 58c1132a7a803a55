"""Inputs of a materialization job as one Ray Dataset of items, whatever the source:

- a directory of video files (its top level; the id is the file name without its suffix, video_file_id;
  unlisted_files names the files it does not read),
- a JSONL manifest, one item a line: {"id", "video", "exo": [{"view", "path", "offset_s"}], "rgbd"} with paths
  relative to the manifest's directory (the synthetic corpus's manifest.jsonl is one); "video" is a video file or
  a folder of frames (the 3D tasks' manifests: pipelines/media.py reads it at one frame per second); a row with
  other keys, values of other types, or without an id or an input, is an item whose problem names its line, and a
  manifest none of whose rows can be stored is a SourceError before Ray starts (list_items),
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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from featurestore import ID_RULE, id_problem

if TYPE_CHECKING:  # imported where a Listing becomes a dataset: listing and annotation checks need no Ray
    import ray

VIDEO_SUFFIXES = ("mp4", "mkv", "webm", "mov", "avi", "m4v", "mpg", "mpeg", "ts", "m2ts", "mts", "3gp", "flv", "wmv",
                  "ogv")  # containers FFmpeg (PyAV) reads
MANIFEST_KEYS = ("id", "video", "exo", "rgbd")
EXO_KEYS = {"view", "path", "offset_s"}
MANIFEST_ROW = ('{"id", "video", "exo": [{"view", "path", "offset_s"}], "rgbd"}, with an id (a string) and at least '
                'one of video, exo, rgbd (paths relative to the manifest\'s folder, or absolute)')
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


def video_file_id(name: str) -> str | None:
    """The item id of a video file, as a folder input names it: its file name without the extension (the folders of
    a path play no part); None for a name without a video suffix."""
    file = PurePosixPath(name)
    return file.stem if file.suffix.lstrip(".").lower() in VIDEO_SUFFIXES else None


@dataclass(frozen=True)
class Listing:
    """What an --input lists, checked without Ray (list_items): its items (a manifest's rows, a folder's videos), or
    the WebDataset shards whose samples are the items."""

    items: tuple[dict, ...] = ()
    tars: tuple[str, ...] = ()
    base: str = ""  # of a sample's relative paths
    duplicates: dict[str, str] = field(default_factory=dict)  # id -> its problem, for ids of several samples

    def dataset(self) -> "ray.data.Dataset":
        import ray

        if self.tars:
            return ray.data.read_webdataset(list(self.tars)).map(
                _webdataset_item, fn_kwargs={"base": self.base, "duplicates": self.duplicates})
        return ray.data.from_items(list(self.items))


def list_items(source: str, root: str | None = None) -> Listing:
    """The items of `source`, or a SourceError naming why it lists none that could be stored; no Ray needed, so
    that a wrong --input is refused before Ray starts."""
    # Items name absolute paths: Ray workers need not share the driver's working directory.
    path, root = Path(source).absolute(), root and str(Path(root).absolute())
    if path.suffix in (".jsonl", ".json"):
        base = root or str(path.parent)
        return _listed([_manifest_item(row, base, f"{path.resolve()} line {n}") for n, row in _manifest_rows(path)],
                       source)
    tars = [path] if path.suffix == ".tar" else sorted(path.glob("*.tar")) if path.is_dir() else []
    if tars:
        return Listing(tars=tuple(map(str, tars)), base=root or str(tars[0].parent.parent),
                       duplicates=_duplicates(_webdataset_ids(tars)))
    if path.is_dir():
        videos = sorted(str(p) for p in path.iterdir() if _is_video(p))
        if not videos:
            raise SourceError(f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)}) and no .tar shards"
                              + (f"; {unlisted_files(source)}" if unlisted_files(source) else ""))
        return _listed([_item(video_file_id(v), v, video=v) for v in videos], source)
    raise SourceError(f"{source}: not a directory of videos or tar shards, a .tar, or a .jsonl manifest")


def read_items(source: str, root: str | None = None) -> "ray.data.Dataset":
    """The items of `source` as a Ray Dataset (list_items, then Listing.dataset)."""
    return list_items(source, root).dataset()


def _is_video(path: Path) -> bool:
    return video_file_id(path.name) is not None and path.is_file()


def unlisted_files(source: str) -> str:
    """For a directory of videos: one line naming the files it holds that are not read as videos, by suffix; "" when
    there are none (or `source` is another kind of input)."""
    path = Path(source)
    if not path.is_dir() or path.suffix == ".tar" or any(path.glob("*.tar")):
        return ""
    others = sorted(p.name for p in path.iterdir() if p.is_file() and not _is_video(p))
    if not others:
        return ""
    suffixes = Counter(Path(name).suffix.lower() or "(none)" for name in others)
    kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(suffixes.items()))
    names = ", ".join(others[:8]) + (", ..." if len(others) > 8 else "")
    return (f"not read: {len(others)} file(s) in {source} that are not videos by their suffix ({kinds}: {names}); "
            f"videos are {', '.join(VIDEO_SUFFIXES)}")


def _item(video_id: str, source: str, video: str = "", video_bytes: bytes | None = None, exo=(), rgbd: str = "",
          problem: str = "") -> dict:
    if not problem and (bad_id := id_problem(video_id)):
        problem = f"{source}: id {video_id!r} {bad_id}; an item id is {ID_RULE}"
    return {"id": video_id, "source": source, "video": video, "video_bytes": video_bytes, "exo": json.dumps(list(exo)),
            "rgbd": rgbd, "problem": problem}


def _flag_duplicate(item: dict, duplicates: dict[str, str]) -> dict:
    return {**item, "problem": item["problem"] or duplicates.get(item["id"], "")}


def _listed(items: list[dict], source: str) -> Listing:
    duplicates = _duplicates([(item["id"], item["source"]) for item in items])
    items = [_flag_duplicate(item, duplicates) for item in items]
    if not items:
        raise SourceError(f"{source}: no rows; a manifest lists one item a line: {MANIFEST_ROW}")
    if all(item["problem"] for item in items):  # a job would only fail them all: say why now, in one line
        raise SourceError(f"{source}: none of its {len(items)} item(s) can be stored; the first: {items[0]['problem']}")
    return Listing(items=tuple(items))


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


def _manifest_item(row, base: str, source: str) -> dict:
    if problem := _row_problem(row):
        # Without a usable id the item is named by its line (an absolute path: no store id, never recorded there).
        video_id = row["id"] if isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"] else source
        return _item(video_id, source, problem=f"{source}: {problem}; a manifest row is {MANIFEST_ROW}")
    return _item(row["id"], source, video=_resolve(base, row.get("video")), **_side_inputs(row, base))


def _row_problem(row) -> str:
    if not isinstance(row, dict):
        return f"{type(row).__name__}, not an object"
    if unknown := sorted(set(row) - set(MANIFEST_KEYS)):
        return f"unknown key(s) {', '.join(map(repr, unknown))}"
    if row.get("id") is None:
        return "no 'id'"
    if not isinstance(row["id"], str) or not row["id"]:
        return f"'id' is {row['id']!r}, not a non-empty string"
    if not any(row.get(key) for key in ("video", "exo", "rgbd")):
        return "no input ('video', 'exo' or 'rgbd')"
    for key in ("video", "rgbd"):
        if row.get(key) is not None and not isinstance(row[key], str):
            return f"{key!r} is {row[key]!r}, not a path"
    exo = row.get("exo") or []
    if not isinstance(exo, list) or not all(_exo_view(v) for v in exo):
        return "'exo' is not a list of {\"view\": int, \"path\": str, \"offset_s\": seconds}"
    # A NUL cannot be in a file name; the OS calls would fail with a traceback in a Ray task.
    if any("\0" in path for path in [row.get("video") or "", row.get("rgbd") or "", *(v["path"] for v in exo)]):
        return "a path holds a NUL character"
    return ""


def _exo_view(view) -> bool:
    if not isinstance(view, dict) or set(view) != EXO_KEYS or isinstance(view["view"], bool):
        return False
    return (isinstance(view["view"], int) and isinstance(view["path"], str)
            and isinstance(view["offset_s"], (int, float)) and not isinstance(view["offset_s"], bool))


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
