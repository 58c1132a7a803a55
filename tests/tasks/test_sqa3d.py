"""SQA3D (ScanQA format): situation + question prompts, str(question_id) ids, question types by the raw first word,
EM / refined EM with the official 1e-10 denominators against --strict; worked out by hand from
docs/PAPER_TASKS.md §4."""
import json

from taskdata import one_line_error, read, write


def item(qid, question, answer, situation="I am sitting on the bed."):
    return {"answers": [answer], "object_ids": [], "object_names": [], "question": question, "situation": situation,
            "question_id": qid, "scene_id": "scene0011_00", "position": [0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0]}


# (question_id, question, answer, prediction): types What 0, Is 1, How 2, Can 3, none of Which (4), What's -> 5
TEST = [
    (220602000001, "What is on my left?", "lamp", "the lamp"),  # "lamp" = "lamp": EM
    (220602000002, "Is the door open?", "yes", "no"),  # wrong
    (220602000003, "How many chairs are there?", "2", "two"),  # both clean to "two": EM
    (220602000004, "What's behind me?", "window", ""),  # empty: refined by default only
    (220602000005, "Can I reach the sink?", "unknown", "unknown"),  # EM ("unknown": outside the answer dict)
]


def test_convert_joins_situation_and_question(tmp_path, pave):
    raw = write(tmp_path / "SQA_train.json", [item(220602000002, "What is in front of me?", "table")])
    assert pave("data", "convert", "sqa3d", raw, "--out", tmp_path / "out")[0] == 0
    assert read(tmp_path / "out/train.json") == [{"id": "220602000002", "video": "scene0011_00", "conversations": [
        {"from": "human", "value": "<image>\nI am sitting on the bed. What is in front of me?"},
        {"from": "gpt", "value": "table"}]}]


def scores(tmp_path, pave, *flags):
    raw = write(tmp_path / "SQA_test.json", [item(q, text, a) for q, text, a, _ in TEST])
    report = write(tmp_path / "report.json", {"predictions": [
        {"id": str(q), "answer": a, "prediction": p} for q, _, a, p in TEST]})
    code, out, err = pave("score", "sqa3d", "--annotations", raw, "--predictions", report, *flags)
    assert code == 0, err
    return {k.removeprefix("[sqa3d] "): v for k, v in json.loads(out).items()}


def test_official_type_scores_carry_the_1e_10_offset(tmp_path, pave):
    m = scores(tmp_path, pave)
    assert (m["EM1"], m["EM1_refined"]) == (3 / 5, 4 / 5)
    one = 1 / (1 + 1e-10)  # one right of one question: 0.9999999999
    assert [m[f"EM_type{t}"] for t in range(6)] == [one, 0.0, one, one, 0.0, 0.0]
    assert [m[f"EM_refined_type{t}"] for t in range(6)] == [one, 0.0, one, one, 0.0, one]
    assert one != 1.0


def test_strict_type_scores_are_exact_and_null_when_empty(tmp_path, pave):
    m = scores(tmp_path, pave, "--strict")
    assert (m["EM1"], m["EM1_refined"]) == (3 / 5, 3 / 5)  # the empty prediction is wrong
    assert [m[f"EM_type{t}"] for t in range(6)] == [1.0, 0.0, 1.0, 1.0, None, 0.0]
    assert m["EM_refined_type5"] == 0.0


def test_native_release_is_refused_with_a_pointer(tmp_path, pave):
    raw = write(tmp_path / "v1_balanced_questions_test_scannetv2.json", {"questions": []})
    one_line_error(pave("data", "convert", "sqa3d", raw, "--out", tmp_path / "out"), "native release",
                   "SQA_test.json")


def test_official_lines_out_of_order_are_refused(tmp_path, pave):
    order = [1, 0, 2, 3, 4]  # the first two swapped
    raw = write(tmp_path / "SQA_test.json", [item(q, text, a) for q, text, a, _ in TEST])
    lines = write(tmp_path / "answers.jsonl", [{"question_id": str(TEST[k][0]), "text": TEST[k][3]} for k in order],
                  lines=True)
    one_line_error(pave("score", "sqa3d", "--annotations", raw, "--predictions", lines),
                   f"{lines} entry 0: question id '220602000002'", "'220602000001'")
