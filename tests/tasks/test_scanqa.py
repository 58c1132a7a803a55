"""ScanQA: raw ScanQA_v1.0_*.json -> annotations (answers[0], renumbered eval ids, frame folders, test splits
without answers dropped), LEO's clean_answer, EM / refined EM and the caption metrics, each worked out by hand from
docs/PAPER_TASKS.md §3."""
import json

import pytest
from taskdata import needs_java, read, read_lines, write

from tasks.scanqa import clean_answer


@pytest.mark.parametrize("raw, default, strict", [
    ("The Brown Chair.", "brown chair", "brown chair"),  # lower-case, "." dropped, article before a word dropped
    ("chair .", "chair ", "chair"),  # default trims spaces before dropping "."; strict after
    ("2 chairs", "two chairs", "two chairs"),
    ("none", "zero", "zero"),
    ("23", "twenty-three", "twenty-three"),
    ("mat2", "mat", "mat"),  # a digit glued to a word
    ("tv stand", "TV stand", "TV stand"),  # upper-case after lower-casing
    ("letf of the rigth tehre", "left of right there", "left of right there"),  # typos; "the" before a word
    ("oclock", "o'clock", "o'clock"),
    ("backwards", "backward", "backward"),
    ("it’s", "its", "it's"),  # the official "’" rule comes after the filter has removed it
])
def test_clean_answer(raw, default, strict):
    assert clean_answer(raw) == default
    assert clean_answer(raw, strict=True) == strict


TRAIN = [
    {"answers": ["brown", "dark brown"], "object_ids": [5], "object_names": ["chair"], "question": "What color is the "
     "chair?", "question_id": "train-scene0000-0", "scene_id": "scene0000_00"},
    {"answers": [], "object_ids": [], "object_names": [], "question": "Where?", "question_id": "train-scene0000-1",
     "scene_id": "scene0000_00"},  # no answer: dropped
]
# (answers, prediction)
VAL = [
    (["dark brown", "brown"], "Brown."),  # "brown" = a reference: EM, refined
    (["2"], "two chairs"),  # "two" != "two chairs"; "two" in "twochairs": refined only
    (["white"], ""),  # empty: refined by default ("" is in everything), never with --strict
    (["chair"], "chair ."),  # "chair " != "chair" by default (refined only); --strict: EM
    (["black"], "blue"),  # wrong
]


def val_files(tmp_path):
    raw = write(tmp_path / "ScanQA_v1.0_val.json", [
        {"answers": answers, "object_ids": [1], "object_names": ["x"], "question": f"Q{k}?",
         "question_id": f"val-scene0011-{k}", "scene_id": "scene0011_00"} for k, (answers, _) in enumerate(VAL)])
    official = write(tmp_path / "answers.jsonl", [
        {"question_id": f"{k + 1:06d}", "prompt": "", "text": p, "answer_id": "x", "model_id": "pave", "metadata": {}}
        for k, (_, p) in enumerate(VAL)], lines=True)
    return raw, official


def score(pave, *argv):
    code, out, err = pave("score", "scanqa", *argv)
    assert code == 0, err
    return json.loads(out)


def test_convert_train_val_and_a_test_split_without_answers(tmp_path, pave):
    raw_val, _ = val_files(tmp_path)
    raw_train = write(tmp_path / "ScanQA_v1.0_train.json", TRAIN)
    raw_test = write(tmp_path / "ScanQA_v1.0_test_w_obj.json", [
        {"object_ids": [], "object_names": [], "question": "Q?", "question_id": "test-scene0700-0",
         "scene_id": "scene0700_00"}])
    for scene in ("scene0000_00", "scene0011_00", "scene0700_00"):
        (tmp_path / "frames" / scene).mkdir(parents=True)
    code, out, err = pave("data", "convert", "scanqa", raw_train, raw_val, raw_test, "--out", tmp_path / "out",
                          "--videos", tmp_path / "frames")
    assert code == 0, err
    train = read(tmp_path / "out/train.json")
    assert train == [{"id": "train-scene0000-0", "video": "scene0000_00", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the chair?"}, {"from": "gpt", "value": "brown"}]}]
    val = read(tmp_path / "out/val.json")
    # eval ids renumbered 000001.. in file order, as the official question file; the target is answers[0]
    assert [s["id"] for s in val] == ["000001", "000002", "000003", "000004", "000005"]
    assert val[0]["conversations"][1]["value"] == "dark brown"
    assert not (tmp_path / "out/test.json").exists()  # its only question has no answers
    assert [d["reason"].startswith("no answers") for d in read_lines(tmp_path / "out/dropped.jsonl")] == [True, True]
    assert read_lines(tmp_path / "out/manifest.jsonl") == [
        {"id": s, "video": str(tmp_path / "frames" / s)} for s in ("scene0000_00", "scene0011_00")]


def test_em_and_refined_em_default_and_strict(tmp_path, pave):
    raw, official = val_files(tmp_path)
    m = score(pave, "--annotations", raw, "--predictions", official)
    assert (m["[scanqa] EM1"], m["[scanqa] EM1_refined"]) == (1 / 5, 4 / 5)  # EM: 1st; refined: 1st to 4th
    strict = score(pave, "--annotations", raw, "--predictions", official, "--strict")
    assert (strict["[scanqa] EM1"], strict["[scanqa] EM1_refined"]) == (2 / 5, 3 / 5)  # EM: 1, 4; refined: 1, 2, 4
    assert set(m) == {f"[scanqa] {k}" for k in ("EM1", "EM1_refined", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4",
                                                  "METEOR", "ROUGE_L", "CIDEr", "SPICE")}


@needs_java
def test_caption_metrics_on_the_cleaned_answers(tmp_path, pave):
    raw, official = val_files(tmp_path)
    m = score(pave, "--annotations", raw, "--predictions", official)
    # tokens after cleaning + PTB: predictions brown | two chairs | (none) | chair | blue
    # BLEU-1: matched 1 + 1 + 0 + 1 + 0 = 3 of 5 predicted tokens; closest reference lengths 1+1+1+1+1 = 5: no
    # brevity penalty -> 0.6
    assert m["[scanqa] Bleu_1"] == pytest.approx(0.6, abs=1e-6)
    # ROUGE-L (beta 1.2, best precision and recall over the references): 1, "two chairs"/"two" P 1/2 R 1 ->
    # 2.44 * 0.5 / (1 + 1.44 * 0.5) = 0.70930, 0, 1, 0 -> mean 0.54186
    assert m["[scanqa] ROUGE_L"] == pytest.approx(2.7093023 / 5, abs=1e-5)
    assert m["[scanqa] SPICE"] is None


@needs_java
def test_perfect_answers_score_as_pycocoevalcap_defines_it(tmp_path, pave, monkeypatch):
    monkeypatch.undo()  # run the real METEOR here
    raw = write(tmp_path / "ScanQA_v1.0_val.json", [
        {"answers": [a], "question": "Q?", "question_id": f"val-{k}", "scene_id": "scene0011_00"}
        for k, a in enumerate(["brown chair", "white table"])])
    report = write(tmp_path / "report.json", {"predictions": [
        {"id": "000001", "answer": "brown chair", "prediction": "Brown chair."},
        {"id": "000002", "answer": "white table", "prediction": "white table"}]})
    m = score(pave, "--annotations", raw, "--predictions", report)
    assert (m["[scanqa] EM1"], m["[scanqa] Bleu_1"], m["[scanqa] ROUGE_L"]) == (1.0, pytest.approx(1.0), 1.0)
    # METEOR 1.5 puts no fragmentation penalty on a hypothesis equal to its reference
    assert m["[scanqa] METEOR"] == pytest.approx(1.0)
    # CIDEr-D: every n-gram in 1 of 2 references (idf log 2 > 0), hypothesis vector = reference vector: cosine 1
    # for n = 1, 2; no 3- or 4-grams in 2 words: 0. Mean over n 0.5, times 10 -> 5.0
    assert m["[scanqa] CIDEr"] == pytest.approx(5.0)


def test_without_java_caption_metrics_are_null_with_a_note(tmp_path, pave, monkeypatch):
    monkeypatch.setattr("tasks.captions.shutil.which", lambda name: None)
    raw, official = val_files(tmp_path)
    code, out, err = pave("score", "scanqa", "--annotations", raw, "--predictions", official)
    m = json.loads(out)
    assert code == 0 and m["[scanqa] EM1"] == 0.2
    assert all(m[f"[scanqa] {k}"] is None for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"))
    assert "`java` is not on PATH" in err
