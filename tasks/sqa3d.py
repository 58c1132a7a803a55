"""SQA3D in its "ScanQA format" (SQA_train.json, SQA_test.json: the SQA3D repo's utils/sqa_data_2_ScanQA.py or
zenodo ScanQA_format.zip), which PAVE reads, as PAVE converts and scores it.

Raw item: {"answers": [one str] ("unknown" for answers outside SQA3D's answer_dict), "object_ids": [],
"object_names": [], "question", "situation", "question_id": int (220602000002), "scene_id", "position": [7]}.
The native release (v1_balanced_questions_*.json / v1_balanced_sqa_annotations_*.json) is refused with a pointer
to the ScanQA-format files.

Conversion (tools/3d/sqa3d/): id = str(question_id) in every split, human = "<image>\\n" + situation + " " +
question, gpt = answers[0], video = scene_id (its folder of posed jpgs, as ScanQA). Dropped, with the reason:
items without an answer or fields.

Score (tools/3d/sqa3d/sqa3d_evaluator.py): ScanQA's clean_answer and EM / refined EM (tasks/scanqa.py, default and
--strict as there) against the one reference answers[0], as fractions under its names "[sqa3d] EM1",
"[sqa3d] EM1_refined", "[sqa3d] EM_type{0..5}", "[sqa3d] EM_refined_type{0..5}"; no caption metrics. Type: the
question's first space-separated word, exactly: What 0, Is 1, How 2, Can 3, Which 4, anything else 5 ("What's",
"Are" are 5), in both modes.
- default: per-type denominators start at 1e-10, as the official ones do (a perfect type reports 0.9999999999...,
  an empty one 0.0).
- --strict: exact per-type fractions; an empty type is null.
Official predictions (JSON lines, as ScanQA's) are joined by position, their question ids checked; `pave eval`'s
by id."""
from dataclasses import dataclass
from pathlib import Path

from tasks.common import Conversion, Skipped, TaskDataError, parsed, qa_conversation, raw_by_split, read_json
from tasks.scanqa import answer_match, clean_answer, join

EXPECTED = "SQA3D's ScanQA-format SQA_{train,val,test}.json (a JSON list of questions)"
TYPE_WORDS = {"What": 0, "Is": 1, "How": 2, "Can": 3, "Which": 4}  # any other first word: 5
N_TYPES = 6


@dataclass(frozen=True)
class Question:
    id: str
    scene: str
    text: str  # situation + " " + question
    answer: str
    type: int


def _question(k: int, item) -> Question | str:
    if not isinstance(item, dict):
        return "not an object"
    fields = [item.get(k) for k in ("situation", "question", "scene_id")]
    if not all(isinstance(f, str) for f in fields) or item.get("question_id") is None:
        return "needs 'situation', 'question', 'question_id' and 'scene_id'"
    answers = item.get("answers")
    if not answers or not isinstance(answers, list) or not isinstance(answers[0], str):
        return "no answer in 'answers'"
    situation, question, scene = fields
    return Question(str(item["question_id"]), scene, f"{situation} {question}", answers[0],
                    TYPE_WORDS.get(question.split(" ")[0], 5))


def questions(path: Path, drop) -> list[Question]:
    raw = read_json(path, EXPECTED)
    if isinstance(raw, dict) and ("questions" in raw or "annotations" in raw):
        raise TaskDataError(f"{path}: SQA3D's native release format; PAVE reads the ScanQA-format files "
                            "SQA_train.json / SQA_test.json (zenodo ScanQA_format.zip, or the SQA3D repo's "
                            "utils/sqa_data_2_ScanQA.py)")
    if not isinstance(raw, list):
        raise TaskDataError(f"{path}: expected {EXPECTED}")
    return parsed(raw, _question, drop)


def convert(conv: Conversion, paths: list[Path]) -> None:
    for split, path in raw_by_split(paths).items():
        for q in questions(path, lambda item, reason: conv.drop(path, item, reason)):
            conv.add(split, path, f"question_id {q.id}", q.id, q.scene, q.scene, qa_conversation([(q.text, q.answer)]))


def score(annotations: Path, predictions: Path, strict: bool) -> dict:
    skipped = Skipped(annotations)
    qs = questions(annotations, skipped)
    skipped.report()
    rows = join([q.id for q in qs], annotations, predictions)
    hits = [answer_match(clean_answer(p.text, strict), [clean_answer(q.answer, strict)], strict)
            for q, p in zip(qs, rows)]
    metrics = {"EM1": sum(h[0] for h in hits) / len(hits), "EM1_refined": sum(h[1] for h in hits) / len(hits)}
    for t in range(N_TYPES):
        typed = [h for q, h in zip(qs, hits) if q.type == t]
        count = len(typed) if strict else len(typed) + 1e-10
        for name, k in (("EM", 0), ("EM_refined", 1)):
            metrics[f"{name}_type{t}"] = sum(h[k] for h in typed) / count if count else None
    return {f"[sqa3d] {name}": value for name, value in metrics.items()}
