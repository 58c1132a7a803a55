"""AVSD: training dialogs cut into groups of 5 turns (leftovers dropped), test dialogs as one multi-turn sample each
("__UNDISCLOSED__" references refused), and the COCO caption scores of the last answers; worked out by hand from
docs/PAPER_TASKS.md §2."""
import json

from taskdata import needs_java, one_line_error, read, read_lines, write


def turns(n, tag="q"):
    return [{"question": f"{tag}{k} question?", "answer": f"{tag}{k} answer"} for k in range(1, n + 1)]


def test_convert_train_groups_and_test_dialogs(tmp_path, pave):
    train = write(tmp_path / "avsd_train.json", {
        "QRM9W": {"data": turns(12), "summary": None, "script": "A person cooks."},  # 2 samples, turns 11-12 left
        "ABCDE": {"data": turns(4), "summary": "short"}})  # shorter than 5: nothing
    test = write(tmp_path / "mock_test_set4DSTC10-AVSD_from_DSTC7_singref.json", {"dialogs": [
        {"image_id": "T1AAA", "summary": "s", "caption": "c", "dialog": turns(3, "t")},
        {"image_id": "T2BBB", "summary": "s", "caption": "c", "dialog": [
            *turns(2, "u"), {"question": "and then?", "answer": "__UNDISCLOSED__"}]}]})
    for folder, vid in (("Charades_v1_480", "QRM9W"), ("Charades_v1_480", "ABCDE"),
                        ("Charades_vu17_test_480", "T1AAA"), ("Charades_vu17_test_480", "T2BBB")):
        write(tmp_path / folder / f"{vid}.mp4", [])
    code, out, err = pave("data", "convert", "avsd", train, test, "--out", tmp_path / "out",
                          "--videos", tmp_path / "Charades_v1_480", "--videos", tmp_path / "Charades_vu17_test_480")
    assert code == 0, err
    samples = read(tmp_path / "out/train.json")
    assert [(s["id"], s["video"]) for s in samples] == [("QRM9W_0", "QRM9W"), ("QRM9W_1", "QRM9W")]
    second = samples[1]["conversations"]
    # turns 6-10; the marker before the group's first question only; answers verbatim
    assert [t["value"] for t in second[:3]] == ["<image>\nq6 question?", "q6 answer", "q7 question?"]
    assert len(second) == 10 and second[-1] == {"from": "gpt", "value": "q10 answer"}
    evals = read(tmp_path / "out/test.json")
    assert [s["id"] for s in evals] == ["T1AAA"]
    assert [t["value"] for t in evals[0]["conversations"]] == [
        "<image>\nt1 question?", "t1 answer", "t2 question?", "t2 answer", "t3 question?", "t3 answer"]
    dropped = read_lines(tmp_path / "out/dropped.jsonl")
    assert [d["item"] for d in dropped] == ["dialog QRM9W turns 11-12", "dialog ABCDE turns 1-4", "entry 1"]
    assert "__UNDISCLOSED__" in dropped[2]["reason"]
    manifest = {r["id"]: r["video"] for r in read_lines(tmp_path / "out/manifest.jsonl")}
    assert manifest == {"QRM9W": str(tmp_path / "Charades_v1_480/QRM9W.mp4"),
                        "T1AAA": str(tmp_path / "Charades_vu17_test_480/T1AAA.mp4")}


def score_files(tmp_path):
    raw = write(tmp_path / "mock_test_set4DSTC10-AVSD_from_DSTC7_singref.json", {"dialogs": [
        {"image_id": vid, "dialog": [{"question": "what is happening?", "answer": ref}]}
        for vid, ref in (("AAAAA", "he is cooking."), ("BBBBB", "she opens the door"), ("CCCCC", "nothing"))]})
    official = write(tmp_path / "results.json", [{"image_id": "AAAAA", "caption": "He is cooking"},
                                                 {"image_id": "BBBBB", "caption": "she closes the door"}])
    return raw, official


@needs_java
def test_only_predicted_dialogs_are_scored_by_default(tmp_path, pave):
    raw, official = score_files(tmp_path)
    code, out, err = pave("score", "avsd", "--annotations", raw, "--predictions", official)
    assert code == 0 and "2 of the 3 dialogs" in err
    m = json.loads(out)
    # PTB tokens: "he is cooking" = reference; "she closes the door" vs "she opens the door"
    # BLEU-1: (3 + 3) / 7 = 0.857; BLEU-2: bigrams (2 + 1) / 5 -> sqrt(6/7 * 3/5) = 0.717; lengths equal: no penalty
    assert (m["Bleu_1"], m["Bleu_2"]) == (0.857, 0.717)
    # ROUGE-L: 1 and LCS 3 of 4 both ways (P = R = 0.75 -> F = 0.75): mean 0.875; 3 decimals as printed
    assert m["ROUGE_L"] == 0.875
    assert m["SPICE"] is None


def test_strict_needs_every_dialog(tmp_path, pave):
    raw, official = score_files(tmp_path)
    one_line_error(pave("score", "avsd", "--annotations", raw, "--predictions", official, "--strict"),
                   f"{official}: no prediction for 1 of the 3 questions", "'CCCCC'")
