"""LLaVA-style conversation annotations: load, validate, and check against a feature store before any training.

An annotation file is a JSON list of
    {"id": "v0003-q0", "video": "v0003",
     "conversations": [{"from": "human", "value": "<video>\\nWhat ...?"}, {"from": "gpt", "value": "high"}]}
`video` names an item in the feature store: its id, or (as LLaVA-Video's files do) the video's file name or path
("kitchen_01.mp4", "clips/kitchen_01.mp4"), read as the id a folder input gives that file, its name without the
extension (sources.video_file_id); two different paths read as one id are refused. Every problem is reported with
the entry it comes from, and all problems of a file are reported together, so a user fixes a bad file in one pass.
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import fsspec

from featurestore import ID_RULE, id_problem
from pipelines.sources import video_file_id

ROLES = {"human": "user", "gpt": "assistant"}
# The video's tokens go where the first human turn marks it, or before that turn's text. LLaVA video data sets often
# write <image> for it. A marker in any other turn, or two, would put the video twice or inside an answer.
VIDEO_MARKER = "<video>"
LEGACY_MARKER = "<image>"


class AnnotationError(ValueError):
    """An annotation file that cannot be trained or evaluated on; the message lists every bad entry."""


@dataclass(frozen=True)
class Sample:
    id: str
    video_id: str
    turns: tuple[tuple[str, str], ...]  # (role, text) with role "user" | "assistant"; the last turn is the answer
    named: str = ""  # the annotation's `video` when it named a file, read as video_id; "" when it gave the id

    @property
    def answer(self) -> str:
        return self.turns[-1][1]

    @property
    def question(self) -> str:
        """The user turns before the answer, without the video marker, whitespace collapsed."""
        return " / ".join(" ".join(plain(text).split()) for role, text in self.turns[:-1] if role == "user")


def plain(text: str) -> str:
    """A turn's text without the video marker."""
    return text.replace(VIDEO_MARKER, "").replace(LEGACY_MARKER, "").strip()


def overlap(train: list[Sample], held_out: list[Sample]) -> tuple[set[str], list[tuple[str, str]]]:
    """The videos both sets use, and (held-out id, training id) for each held-out sample that asks a training sample's
    question of the same video: evaluated on what it was trained on."""
    asked: dict[tuple[str, str], str] = {}
    for s in train:
        asked.setdefault((s.video_id, s.question), s.id)
    same = [(s.id, asked[key]) for s in held_out if (key := (s.video_id, s.question)) in asked]
    return {s.video_id for s in train} & {s.video_id for s in held_out}, same


def _parse_entry(index: int, entry) -> tuple[Sample | None, list[str]]:
    where = f"entry {index}"
    if not isinstance(entry, dict):
        return None, [f"{where}: expected an object, got {type(entry).__name__}"]
    sample_id, video = entry.get("id"), entry.get("video")
    if isinstance(sample_id, str):
        where = f"entry {index} (id {sample_id!r})"
    problems = []
    if not isinstance(sample_id, str) or not sample_id:
        problems.append(f"{where}: 'id' must be a non-empty string")
    named = video if isinstance(video, str) and video_file_id(video) is not None else ""
    video_id = video_file_id(named) if named else video
    if id_problem(video_id):  # the store's own id rule: every item it holds can be named here, nothing else
        problems.append(f"{where}: 'video' must be a store item id ({ID_RULE}), got {video!r}, or a video file's "
                        "name or path whose name without the extension is one")
    turns = []
    conversations = entry.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        problems.append(f"{where}: 'conversations' must be a non-empty list")
    else:
        for k, turn in enumerate(conversations):
            if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                problems.append(f"{where}: turn {k} must be {{'from': 'human'|'gpt', 'value': str}}")
                continue
            turns.append((ROLES[turn["from"]], turn["value"]))
        if turns and turns[-1][0] != "assistant":
            problems.append(f"{where}: the last turn must be the answer ('from': 'gpt')")
        problems += _marker_problems(where, turns)
    if problems:
        return None, problems
    return Sample(sample_id, video_id, tuple(turns), named), []


def _marker_problems(where: str, turns: list[tuple[str, str]]) -> list[str]:
    questions = [k for k, (role, _) in enumerate(turns) if role == "user"]
    if not questions:
        return [f"{where}: no question ('from': 'human') before the answer"]
    problems = []
    for k, (_, text) in enumerate(turns):
        markers = text.count(VIDEO_MARKER) + text.count(LEGACY_MARKER)
        if markers and k != questions[0]:
            problems.append(f"{where}: turn {k} holds a video marker ({VIDEO_MARKER} or {LEGACY_MARKER}); only the "
                            "first human turn may mark where the video goes")
        elif markers > 1:
            problems.append(f"{where}: turn {k} holds {markers} video markers; a sample has one video")
    return problems


def load_annotations(path: str | Path, storage_options: dict | None = None) -> list[Sample]:
    """Parse and validate an annotation file, a local path or a URL (read through fsspec with `storage_options`);
    raise AnnotationError listing every problem."""
    try:
        with fsspec.open(str(path), "rb", **(storage_options or {})) as f:
            raw = json.loads(f.read())
    except (OSError, ValueError) as err:  # unreachable or missing; not UTF-8 or not JSON
        raise AnnotationError(f"{path}: not a readable JSON file: {err}") from err
    if not isinstance(raw, list):
        raise AnnotationError(f"{path}: expected a JSON list of samples, got {type(raw).__name__}")
    samples, problems, seen = [], [], set()
    files: dict[str, tuple[int, str]] = {}  # video id -> (first entry, the file) of the samples that name a file
    for index, entry in enumerate(raw):
        sample, entry_problems = _parse_entry(index, entry)
        problems += entry_problems
        if sample is not None:
            if sample.id in seen:
                problems.append(f"entry {index}: duplicate id {sample.id!r}")
            seen.add(sample.id)
            samples.append(sample)
            if sample.named:
                first, file = files.setdefault(sample.video_id, (index, sample.named))
                if file != sample.named:
                    problems.append(f"entry {index} (id {sample.id!r}): 'video' {sample.named!r} and entry {first}'s "
                                    f"{file!r} both read as store id {sample.video_id!r} (the file name without the "
                                    "extension); give the videos distinct ids (a manifest's `id`) and write those")
    if problems:
        raise AnnotationError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if not samples:
        raise AnnotationError(f"{path}: no samples")
    if named := [s for s in samples if s.named]:
        print(f"note: {path}: {len(named)} sample(s) name their video by file, read as the store id that the file name "
              f"without the extension gives, e.g. {named[0].named!r} -> {named[0].video_id!r}", file=sys.stderr)
    return samples


def store_problems(samples: list[Sample], available: dict[str, set[str]]) -> list[str]:
    """What the store lacks for `samples`: one line per set of missing videos (naming the modalities, the ids, and
    the file a sample wrote for one). `available` maps each requested modality to the item ids committed for it (an
    empty set when the store has no such modality)."""
    files = {s.video_id: s for s in samples if s.named}
    problems, lacking = [], {}  # missing ids -> the modalities that lack them
    for modality, items in available.items():
        if not items:
            problems.append(f"the store has no committed '{modality}' features")
        elif missing := tuple(sorted({s.video_id for s in samples} - items)):
            lacking.setdefault(missing, []).append(modality)
    for missing, modalities in lacking.items():
        shown = ", ".join(f"{v} (sample {files[v].id!r} wrote {files[v].named!r})" if v in files else v
                          for v in missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        problems.append(f"{len(missing)} video(s) have no {' or '.join(map(repr, modalities))} features: {shown}")
    if files.keys() & {v for missing in lacking for v in missing}:
        problems.append("a video named by its file is read as the file name without the extension, the id a folder "
                        "input gives it: materialize that file, or write the video's store id")
    return problems


def check_against_store(samples: list[Sample], available: dict[str, set[str]], source: str) -> None:
    """Refuse samples whose video lacks features for a requested modality: AnnotationError naming the modality and
    the missing ids (store_problems)."""
    if problems := store_problems(samples, available):
        raise AnnotationError(f"{source}: " + "; ".join(problems))
