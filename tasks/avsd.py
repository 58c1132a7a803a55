"""AVSD (Charades videos; DSTC7 test dialogs with one reference) as PAVE converts and scores it.

Raw files: training avsd_train.json, an object keyed by Charades video id ("QRM9W") whose values hold "data", a
list of {question, answer} turns ("summary", "script" are not read); test: the DSTC10 mock test file
mock_test_set4DSTC10-AVSD_from_DSTC7_singref.json, {"dialogs": [{"image_id", "summary", "caption", "dialog":
[{question, answer}]}]}, whose last answer is the one reference. Either shape is read for either split.

Conversion (tools/audio/avsd/): train dialogs are cut into groups of 5 turns, one sample each, id "{vid}_{k}",
"<image>\\n" before the group's first question; the leftover turns (and dialogs shorter than 5) are dropped, as
the official converter drops them. Eval: one sample per dialog, id = video id, every turn with its ground-truth
answer and the last answer the target (the official eval prompt: no summary or caption). Video {vid}.mp4 under
--videos (Charades_v1_480/ for train, Charades_vu17_test_480/ for test: give both). Dropped, with the reason: a
test dialog whose last answer is "__UNDISCLOSED__" (the challenge-time file; use the mock test file), malformed
turns.

Score (tools/audio/avsd/run_coco_eval.py: pycocotools + COCOEvalCap): Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr,
SPICE of the predictions against the last answers (tasks/captions.py), fractions with 3 decimals as it prints
them (README's CIDEr 152.9 is 1.529). One reference per dialog: not comparable to 6-reference DSTC7 numbers.
- default: only the dialogs with a prediction are scored (COCOEvalCap is restricted to the results' image ids;
  CIDEr's IDF then comes from those references only); a note on stderr says how many.
- --strict: every dialog needs a prediction.
Both: official results ({image_id, caption} list) and `pave eval`'s report are joined by video id; a prediction
for an unknown id, or two for one, is refused (loadRes / BLEU refuse them too)."""
from dataclasses import dataclass
from pathlib import Path

from tasks.captions import coco_scores
from tasks.common import (Conversion, Skipped, TaskDataError, by_key, note, parsed, qa_conversation, raw_by_split,
                          read_json, read_predictions)

EXPECTED = ('AVSD\'s avsd_train.json ({video id: {"data": [{question, answer}]}}) or a DSTC dialog file '
            '({"dialogs": [{"image_id", "dialog": [{question, answer}]}]})')
OFFICIAL = "the official eval output (a JSON list of {image_id, caption})"
GROUP = 5  # turns per training sample
HIDDEN = "__UNDISCLOSED__"


@dataclass(frozen=True)
class Dialog:
    vid: str
    turns: list[tuple[str, str]]  # (question, answer)


def _dialog(k: int, entry: tuple) -> Dialog | str:
    vid, turns = entry
    if not isinstance(vid, str) or not isinstance(turns, list) or not turns or not all(
            isinstance(t, dict) and isinstance(t.get("question"), str) and isinstance(t.get("answer"), str)
            for t in turns):
        return "needs a video id and a non-empty list of {question, answer} strings"
    return Dialog(vid, [(t["question"], t["answer"]) for t in turns])


def _eval_dialog(k: int, entry: tuple) -> Dialog | str:
    dialog = _dialog(k, entry)
    if isinstance(dialog, Dialog) and dialog.turns[-1][1] == HIDDEN:
        return (f"its last answer, the reference, is {HIDDEN!r} (the challenge-time test file); use "
                "mock_test_set4DSTC10-AVSD_from_DSTC7_singref.json, which holds it")
    return dialog


def dialogs(path: Path, split: str, drop) -> list[Dialog]:
    raw = read_json(path, EXPECTED)
    if isinstance(raw, dict) and isinstance(raw.get("dialogs"), list):
        entries = [(d.get("image_id"), d.get("dialog")) if isinstance(d, dict) else (None, None)
                   for d in raw["dialogs"]]
    elif isinstance(raw, dict):
        entries = [(vid, v.get("data") if isinstance(v, dict) else None) for vid, v in raw.items()]
    else:
        raise TaskDataError(f"{path}: expected {EXPECTED}")
    return parsed(entries, _dialog if split == "train" else _eval_dialog, drop)


def convert(conv: Conversion, paths: list[Path]) -> None:
    for split, path in raw_by_split(paths).items():
        for d in dialogs(path, split, lambda item, reason: conv.drop(path, item, reason)):
            video = f"{d.vid}.mp4"
            if split != "train":
                conv.add(split, path, f"dialog {d.vid}", d.vid, d.vid, video, qa_conversation(d.turns))
                continue
            groups = len(d.turns) // GROUP
            for g in range(groups):
                conv.add(split, path, f"dialog {d.vid} turns {GROUP * g + 1}-{GROUP * g + GROUP}", f"{d.vid}_{g}",
                         d.vid, video, qa_conversation(d.turns[GROUP * g:GROUP * (g + 1)]))
            if len(d.turns) > GROUP * groups:
                conv.drop(path, f"dialog {d.vid} turns {GROUP * groups + 1}-{len(d.turns)}",
                          f"left over after groups of {GROUP} turns; the official converter drops them")


def score(annotations: Path, predictions: Path, strict: bool) -> dict:
    skipped = Skipped(annotations)
    ds = dialogs(annotations, "test", skipped)
    skipped.report()
    _, found = read_predictions(predictions, OFFICIAL, key="image_id", text="caption")
    rows = by_key([d.vid for d in ds], found, predictions, annotations, partial=not strict)
    scored = [(d, p) for d, p in zip(ds, rows) if p is not None]
    if not scored:
        raise TaskDataError(f"{predictions}: no predictions; expected {OFFICIAL} or `pave eval`'s report.json")
    if len(scored) < len(ds):
        note(f"{len(scored)} of the {len(ds)} dialogs of {annotations} have a prediction and are scored, as the "
             "official evaluator does (--strict refuses missing predictions)")
    metrics = coco_scores({d.vid: [d.turns[-1][1]] for d, _ in scored}, {d.vid: p.text for d, p in scored})
    return {name: None if value is None else float(f"{value:.3f}") for name, value in metrics.items()}
