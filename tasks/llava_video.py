"""LLaVA-Video-178K open-ended QA, the "enhanced video" training set, as PAVE subsets it. Training only: its
benchmarks (VideoMME, MVBench) are scored by lmms-eval, not by `pave score`.

Raw files: {dur}_{src}_v0_1/*_oe_v0_1_qa_processed.json, each a JSON list of {"id": video id, "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}], "data_source", "video":
"academic_source/activitynet/v_x.mp4"}; PAVE uses the four of 1_2_m / 2_3_m x academic / youtube.

Conversion (tools/enhanced_video/create_llava_video_178k_anno_subset.py): per file, the first 2 entries of each
`id` in file order ("_2pv"), conversations untouched; the others are listed as dropped with that reason. Sample
id "{id}_{k}" (k = 0, 1: entries of one video share `id`). Store item id: the video path without its first
component and extension ("activitynet/v_x"), the official feature files' names, so released features line up.
Video: `video` under --videos (give each subset's folder). Dropped too, with the reason: conversations our
annotation format cannot hold (not human/gpt turns ending with the answer, a video marker outside the first
question)."""
from collections import Counter
from pathlib import Path, PurePosixPath

from tasks.common import Conversion, read_list

EXPECTED = "a LLaVA-Video-178K *_qa_processed.json (a JSON list of {id, conversations, video})"
PER_VIDEO = 2
MARKERS = ("<image>", "<video>")


def store_id(video: str) -> str:
    """The official feature file's name: the video's relative path, first component dropped, no extension."""
    parts = PurePosixPath(video).parts
    return str(PurePosixPath(*parts[1:] if len(parts) > 1 else parts).with_suffix(""))


def _problem(entry) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("video"), str) or entry.get("id") is None:
        return "needs 'id', 'video' and 'conversations'"
    turns = entry.get("conversations")
    roles = [t.get("from") if isinstance(t, dict) and isinstance(t.get("value"), str) else None
             for t in turns] if isinstance(turns, list) else []
    if not roles or roles != ["human", "gpt"] * (len(roles) // 2):
        return "conversations must be human/gpt turns in pairs, ending with the answer"
    if any(marker in t["value"] for t in turns[1:] for marker in MARKERS) or \
            sum(turns[0]["value"].count(marker) for marker in MARKERS) > 1:
        return "a video marker outside the first question, or two; our annotations hold one, in the first question"
    return ""


def convert(conv: Conversion, paths: list[Path]) -> None:
    for path in paths:
        seen = Counter()
        for k, entry in enumerate(read_list(path, EXPECTED)):
            if problem := _problem(entry):
                conv.drop(path, f"entry {k}", problem)
                continue
            vid, n = str(entry["id"]), seen[str(entry["id"])]
            seen[vid] += 1
            if n >= PER_VIDEO:
                conv.drop(path, f"entry {k} (id {vid})", f"entry {n + 1} of its video; the official subset keeps the "
                          f"first {PER_VIDEO} per id")
                continue
            conv.add("train", path, f"entry {k} (id {vid})", f"{vid}_{n}", store_id(entry["video"]), entry["video"],
                     entry["conversations"])
