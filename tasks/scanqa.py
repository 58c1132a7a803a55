"""ScanQA (ATR-DBI's ScanQA_v1.0_{train,val}.json) as PAVE converts and scores it, and the answer cleaning and
matching it shares with SQA3D (tasks/sqa3d.py).

Raw item: {"answers": [str, ...], "object_ids", "object_names", "question", "question_id": "val-scene0011-0",
"scene_id": "scene0011_00"}; val items may carry several answers; the test splits (_test_w_obj, _test_wo_obj)
carry none.

Conversion (tools/3d/scanqa/): train id = question_id, gpt = answers[0] only; eval ids are renumbered "000001",
"000002", ... in file order (the official question/answer files), gpt = answers[0] (the references for scoring
come from the raw file). human = "<image>\\n" + question; video = scene_id, whose frames are the folder
{scene_id}/ of posed jpgs. Dropped, with the reason: items without answers (the test splits) or fields.

Score (tools/3d/scanqa/scanqa_evaluator.py, from LEO), fractions as it reports them, under its names
"[scanqa] EM1", "[scanqa] EM1_refined", "[scanqa] Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"
(tasks/captions.py: on the cleaned answers, references newline-stripped):
- default: clean_answer below on the prediction and every reference: lower-case, trim and collapse spaces, then
  drop every character but letters, digits, comma, apostrophe, whitespace, hyphen, colon (so "chair ." becomes
  "chair " and fails), typo map, tv -> TV, numbers 0-20 and 23 -> words, none -> zero, a digit glued to a word
  dropped, articles before a word dropped, backwards -> backward. EM1: the cleaned prediction equals a cleaned
  reference; EM1_refined: or one, whitespace removed, is a substring of the other, so an empty prediction counts.
- --strict: "’" -> "'" and "ç" -> "c" before the character filter (the official ones come after it and never
  fire), spaces trimmed and collapsed after it; an empty prediction is never correct.
Both: official predictions (JSON lines {question_id, text, ...}) are joined by position and their question ids
must follow the question file's; `pave eval`'s by id."""
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.captions import coco_scores
from tasks.common import (Conversion, Prediction, Skipped, by_key, by_position, parsed, qa_conversation, raw_by_split,
                          read_list, read_predictions)

EXPECTED = "ScanQA's ScanQA_v1.0_{train,val}.json (a JSON list of questions)"
OFFICIAL = "the official eval output (JSON lines {question_id, prompt, text, answer_id, model_id, metadata})"
KEPT = re.compile(r"[^a-zA-Z0-9,'\s\-:]+")  # what clean_answer drops
SPACES = [(r"[ ]+$", ""), (r"^[ ]+", ""), (r" {2,}", " "), (r"\.[ ]{2,}", ". ")]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
WORDS = [  # after the character filter, in LEO's order
    *[(rf"\b{typo}\b", right) for typo, right in [
        ("letf", "left"), ("let", "left"), ("tehre", "there"), ("rigth", "right"), ("rght", "right"),
        ("behine", "behind"), ("tv", "TV"), ("chai", "chair"), ("wasing", "washing"), ("waslked", "walked"),
        ("oclock", "o'clock"), ("o'[ ]+clock", "o'clock")]],
    (r"\b0\b", "zero"), (r"\bnone\b", "zero"), *[(rf"\b{n}\b", NUMBERS[n]) for n in range(1, 21)],
    (r"\b23\b", "twenty-three"),
    (r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>"),  # mat2 -> mat
    (r"\ba\b ([a-zA-Z]+)", r"\g<1>"), (r"\ban\b ([a-zA-Z]+)", r"\g<1>"), (r"\bthe\b ([a-zA-Z]+)", r"\g<1>"),
    (r"\bbackwards\b", "backward"),
]


def clean_answer(text: str, strict: bool = False) -> str:
    text = text.lower()
    if strict:
        text = " ".join(KEPT.sub("", text.replace("’", "'").replace("ç", "c")).split())
    else:
        for pattern, replacement in SPACES:
            text = re.sub(pattern, replacement, text)
        text = KEPT.sub("", text)
    for pattern, replacement in WORDS:
        text = re.sub(pattern, replacement, text)
    return text


def answer_match(prediction: str, references: list[str], strict: bool) -> tuple[int, int]:
    """(EM, refined EM) of a cleaned prediction against cleaned references."""
    if strict and not prediction:
        return 0, 0
    if prediction in references:
        return 1, 1
    squeezed = "".join(prediction.split())
    return 0, int(any(squeezed in "".join(r.split()) or "".join(r.split()) in squeezed for r in references))


def join(ids: list[str], annotations: Path, predictions: Path) -> list[Prediction]:
    """The prediction of each question: official JSON lines by position, `pave eval`'s report by id."""
    pave, found = read_predictions(predictions, OFFICIAL, key="question_id", text="text")
    return by_key(ids, found, predictions, annotations) if pave else \
        by_position(ids, found, predictions, annotations, ids, "question id")


@dataclass(frozen=True)
class Question:
    id: str
    scene: str
    text: str
    answers: list[str]


def _questioner(split: str):
    """parse(k, item) of a split: eval ids are renumbered from the file position, as the official eval files'."""
    def parse(k: int, item) -> Question | str:
        if problem := _problem(item):
            return problem
        sample_id = str(item["question_id"]) if split == "train" else f"{k + 1:06d}"
        return Question(sample_id, item["scene_id"], item["question"], item["answers"])
    return parse


def _problem(item) -> str:
    if not isinstance(item, dict):
        return "not an object"
    if not isinstance(item.get("question"), str) or not isinstance(item.get("scene_id"), str) \
            or item.get("question_id") is None:
        return "needs 'question', 'question_id' and 'scene_id'"
    answers = item.get("answers")
    if not answers or not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "no answers (ScanQA's test splits hold none: train on train, evaluate on val)"
    return ""


def questions(path: Path, split: str, drop) -> list[Question]:
    return parsed(read_list(path, EXPECTED), _questioner(split), drop)


def convert(conv: Conversion, paths: list[Path]) -> None:
    for split, path in raw_by_split(paths).items():
        for q in questions(path, split, lambda item, reason: conv.drop(path, item, reason)):
            # the scene's frames: its folder of posed jpgs (posed_images_new/{scene_id}/ in the release)
            conv.add(split, path, f"question {q.id}", q.id, q.scene, q.scene, qa_conversation([(q.text, q.answers[0])]))


def score(annotations: Path, predictions: Path, strict: bool) -> dict:
    skipped = Skipped(annotations)
    qs = questions(annotations, "val", skipped)
    skipped.report()
    rows = join([q.id for q in qs], annotations, predictions)
    hits, cleaned, references = [], {}, {}
    for k, (q, p) in enumerate(zip(qs, rows)):
        cleaned[k] = clean_answer(p.text, strict)
        refs = [clean_answer(a, strict) for a in q.answers]
        hits.append(answer_match(cleaned[k], refs, strict))
        references[k] = [r.replace("\n", " ").strip() for r in refs]
    metrics = {"EM1": sum(h[0] for h in hits) / len(hits), "EM1_refined": sum(h[1] for h in hits) / len(hits),
               **coco_scores(references, cleaned)}
    return {f"[scanqa] {name}": value for name, value in metrics.items()}
