"""MUSIC-AVQA (GeWu-Lab's avqa-{train,val,test}.json) as PAVE converts and scores it.

Raw item: {"video_id": "00000272" (real) | "esa00000307" (synthetic), "question_id": int, "type": '["Audio-Visual",
"Temporal"]' (a JSON list inside a string), "question_content": a template with <Object>, <LR>, ... placeholders,
"templ_values": '["violin", "left"]' (also a string), "question_deleted": 0|1, "anser": the answer (the dataset's
spelling)}.

Conversion (tools/audio/music-avqa/): the i-th placeholder gets the i-th value (a name may repeat; a template may
end in a space, which is kept); id = str(question_id), video = video_id, human = "<image>\\n" + question, gpt =
anser verbatim. Train questions whose type says "Audio" (Audio and Audio-Visual, not Visual) are added twice; the
copy's id gets "_dup" because our annotations need unique ids. question_deleted is ignored, as PAVE ignores it.
Dropped, with the reason: a placeholder/value count mismatch (the official converter stops there), a type
outside the nine pairs, a missing field. Videos: MUSIC-AVQA-videos-Real/{vid}.mp4 when the id starts with a
digit, else MUCIS-AVQA-videos-Synthetic/{vid}.mp4 (the dataset's spelling).

Score (tools/audio/music-avqa/calculate_acc.py), in percent with 2 decimals as it prints:
- default: correct iff the lower-cased target is a substring of the lower-cased prediction ("none" counts for
  "one", "piano" for "no"; "3" fails "three", "acoustic guitar" fails "acoustic_guitar"); the target is the
  "answer" stored in the prediction file when it has one (the official script reads it there).
- --strict: correct iff prediction and the annotation's answer are equal after lower-casing, "_" -> " ",
  punctuation dropped and numbers 0-20 written as words.
Both: official predictions are joined by position (one per question, in file order; each one's image_id must be
the video of the question at its position), `pave eval`'s by id; the
type comes from the annotation; groups are micro-averages; an empty group is null (the official script divides
by zero)."""
import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.common import (Conversion, Skipped, by_key, by_position, parsed, qa_conversation, raw_by_split,
                          read_list, read_predictions)

EXPECTED = "MUSIC-AVQA's avqa-{train,val,test}.json (a JSON list of questions)"
OFFICIAL = "the official eval output (a JSON list of {image_id, pred, question, answer} in question order)"
PLACEHOLDER = re.compile(r"<[A-Za-z]+>")
# (modality, question type) -> the name calculate_acc.py prints, in its order; then its groups
TYPES = {("Audio", "Counting"): "Audio Counting", ("Audio", "Comparative"): "Audio Cmp",
         ("Visual", "Counting"): "Visual Counting", ("Visual", "Location"): "Visual Loc",
         ("Audio-Visual", "Existential"): "AV Ext", ("Audio-Visual", "Counting"): "AV counting",
         ("Audio-Visual", "Location"): "AV Loc", ("Audio-Visual", "Comparative"): "AV Cmp",
         ("Audio-Visual", "Temporal"): "AV Temporal"}
GROUPS = {"Audio": "Audio", "Visual": "Visual", "Audio-Visual": "AV"}
PRINTED = ["Audio Counting", "Audio Cmp", "Audio", "Visual Counting", "Visual Loc", "Visual", "AV Ext", "AV counting",
           "AV Loc", "AV Cmp", "AV Temporal", "AV", "Overall"]  # calculate_acc.py's order
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


@dataclass(frozen=True)
class Question:
    id: str
    video: str
    text: str  # the filled template
    answer: str
    modality: str  # Audio | Visual | Audio-Visual
    type: str  # the name calculate_acc.py prints


def _list(value) -> list | None:
    """A list field that the dataset stores as a JSON string (or already a list); None if it is neither."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _question(k: int, item) -> Question | str:
    """The question of a raw item, or why it cannot be one."""
    if not isinstance(item, dict):
        return "not an object"
    vid, template, answer = item.get("video_id"), item.get("question_content"), item.get("anser")
    if not isinstance(vid, str) or not vid:
        return f"video_id {vid!r} is not a non-empty string (such as '00000272')"
    if not isinstance(template, str) or not isinstance(answer, str) or item.get("question_id") is None:
        return "needs 'question_id', a 'question_content' string and an 'anser' string (the dataset's spelling)"
    pair, values = _list(item.get("type")), _list(item.get("templ_values"))
    if pair is None or tuple(pair) not in TYPES:
        return f"type {item.get('type')!r} is none of the nine (modality, question type) pairs"
    if values is None:
        return f"templ_values {item.get('templ_values')!r} is not a list of strings"
    if len(PLACEHOLDER.findall(template)) != len(values):
        return (f"question_content {template!r} has {len(PLACEHOLDER.findall(template))} placeholders for "
                f"{len(values)} templ_values; the official converter stops here")
    fill = iter(values)
    return Question(str(item["question_id"]), vid, PLACEHOLDER.sub(lambda _: next(fill), template), answer, pair[0],
                    TYPES[tuple(pair)])


def questions(path: Path, drop) -> list[Question]:
    """The questions of a raw file in file order; `drop(item, reason)` is told about the others."""
    return parsed(read_list(path, EXPECTED), _question, drop)


def video_path(vid: str) -> str:
    folder = "MUSIC-AVQA-videos-Real" if vid[0].isdigit() else "MUCIS-AVQA-videos-Synthetic"
    return f"{folder}/{vid}.mp4"


def convert(conv: Conversion, paths: list[Path]) -> None:
    for split, path in raw_by_split(paths).items():
        for q in questions(path, lambda item, reason: conv.drop(path, item, reason)):
            turns = qa_conversation([(q.text, q.answer)])
            where = f"question_id {q.id}"
            conv.add(split, path, where, q.id, q.video, video_path(q.video), turns)
            if split == "train" and q.modality != "Visual":  # the official test: "Audio" in the raw type string
                conv.add(split, path, where, f"{q.id}_dup", q.video, video_path(q.video), turns)


def _strict_form(text: str) -> str:
    words = re.sub(r"[^\w\s]", " ", text.lower().replace("_", " ")).split()
    return " ".join(NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in words)


def _percent(correct: list[bool]) -> float | None:
    return float(f"{100 * sum(correct) / len(correct):.2f}") if correct else None


def score(annotations: Path, predictions: Path, strict: bool) -> dict:
    skipped = Skipped(annotations)
    qs = questions(annotations, skipped)
    skipped.report()
    pave, found = read_predictions(predictions, OFFICIAL, key="image_id", text="pred", answer="answer")
    ids = [q.id for q in qs]
    rows = by_key(ids, found, predictions, annotations) if pave else \
        by_position(ids, found, predictions, annotations, [q.video for q in qs], "video id (image_id)")
    results = {name: [] for name in PRINTED}
    for q, p in zip(qs, rows):
        if strict:
            correct = _strict_form(p.text) == _strict_form(q.answer)
        else:
            correct = (q.answer if p.answer is None else p.answer).lower() in p.text.lower()
        for name in (q.type, GROUPS[q.modality], "Overall"):
            results[name].append(correct)
    return {**{name: _percent(results[name]) for name in PRINTED},
            "counts": {name: len(results[name]) for name in PRINTED}}
