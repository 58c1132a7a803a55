"""MUSIC-AVQA: raw avqa-*.json -> annotations (template filling, Audio duplication, dropped items) and the official
accuracy (substring rule) against --strict, every expectation worked out by hand from docs/PAPER_TASKS.md §1."""
import json

from taskdata import one_line_error, read, read_lines, write


def item(qid, vid, pair, template, values, answer, deleted=0):
    # the dataset's own encoding: type and templ_values are JSON lists inside strings, the answer key is misspelled
    return {"video_id": vid, "question_id": qid, "type": json.dumps(pair), "question_content": template,
            "templ_values": json.dumps(values), "question_deleted": deleted, "anser": answer}


TRAIN = [
    # repeated placeholder names, filled in order; the template's trailing space is kept
    item(1, "00000272", ["Audio-Visual", "Temporal"], "Is the <Object> on the <LR> more rhythmic than the <Object> "
         "on the <LR>? ", ["violin", "left", "cello", "right"], "yes"),
    # synthetic video (letter prefix), no placeholders, question_deleted 1 (PAVE keeps it)
    item(2, "esa00000307", ["Visual", "Counting"], "How many instruments are sounding?", [], "two", deleted=1),
    item(3, "va00005060", ["Audio", "Comparative"], "Is the <Object> louder than the <Object>?", ["piano", "guitar"],
         "no"),
    item(4, "00000272", ["Audio", "Counting"], "How many <Object> sound?", [], "one"),  # 1 placeholder, 0 values
    item(5, "00000272", ["Audio", "Location"], "Where is it?", [], "left"),  # not one of the nine pairs
    item(6, "00000999", ["Visual", "Location"], "Where is the <FL>?", ["flute"], "left"),  # its video is missing
]


def videos(root):
    for rel in ("MUSIC-AVQA-videos-Real/00000272.mp4", "MUCIS-AVQA-videos-Synthetic/esa00000307.mp4",
                "MUCIS-AVQA-videos-Synthetic/va00005060.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def test_convert_fills_templates_doubles_audio_questions_and_lists_drops(tmp_path, pave):
    raw = write(tmp_path / "avqa-train.json", TRAIN)
    code, out, err = pave("data", "convert", "music-avqa", raw, "--out", tmp_path / "out",
                          "--videos", videos(tmp_path / "videos"))
    assert code == 0, err
    samples = read(tmp_path / "out/train.json")
    # 1 (Audio-Visual: "Audio" is in its type string) twice, 2 (Visual) once, 3 (Audio) twice; 4, 5, 6 dropped
    assert [s["id"] for s in samples] == ["1", "1_dup", "2", "3", "3_dup"]
    assert samples[0]["conversations"] == [
        {"from": "human", "value": "<image>\nIs the violin on the left more rhythmic than the cello on the right? "},
        {"from": "gpt", "value": "yes"}]
    assert samples[1]["conversations"] == samples[0]["conversations"]
    assert samples[3]["conversations"][0]["value"] == "<image>\nIs the piano louder than the guitar?"
    assert [s["video"] for s in samples] == ["00000272", "00000272", "esa00000307", "va00005060", "va00005060"]
    dropped = read_lines(tmp_path / "out/dropped.jsonl")
    assert [d["item"] for d in dropped] == ["entry 3", "entry 4", "question_id 6"]
    assert "1 placeholders for 0 templ_values" in dropped[0]["reason"]
    assert "none of the nine" in dropped[1]["reason"]
    assert "MUSIC-AVQA-videos-Real/00000999.mp4 is under none of --videos" in dropped[2]["reason"]
    # real ids start with a digit, synthetic ones live in the dataset's "MUCIS" folder
    manifest = {row["id"]: row["video"] for row in read_lines(tmp_path / "out/manifest.jsonl")}
    assert manifest == {"00000272": str(tmp_path / "videos/MUSIC-AVQA-videos-Real/00000272.mp4"),
                        "esa00000307": str(tmp_path / "videos/MUCIS-AVQA-videos-Synthetic/esa00000307.mp4"),
                        "va00005060": str(tmp_path / "videos/MUCIS-AVQA-videos-Synthetic/va00005060.mp4")}
    assert out.strip() == (f"music-avqa: train 5 samples in {tmp_path / 'out'}; 3 videos in "
                           f"{tmp_path / 'out/manifest.jsonl'}; 3 dropped ({tmp_path / 'out/dropped.jsonl'})")


# One question per type: (question_id, type pair, answer in the annotations, prediction, answer in the prediction file)
TEST = [
    (10, ["Audio", "Counting"], "one", "none", "one"),  # substring: right; strict: wrong
    (11, ["Audio", "Comparative"], "no", "piano", "no"),  # substring: right; strict: wrong
    (12, ["Visual", "Counting"], "three", "3", "three"),  # substring: wrong; strict (3 -> three): right
    (13, ["Visual", "Location"], "left", "Left.", "left"),  # both right
    (14, ["Audio-Visual", "Existential"], "yes", "yes", "no"),  # official target "no" (from the file): wrong
    (15, ["Audio-Visual", "Counting"], "two", "2", "two"),  # substring: wrong; strict: right
    (16, ["Audio-Visual", "Location"], "acoustic_guitar", "acoustic guitar", "acoustic_guitar"),  # likewise
    (17, ["Audio-Visual", "Comparative"], "yes", "Yes", "yes"),  # both right
    (18, ["Audio-Visual", "Temporal"], "indoor", "indoors", "indoor"),  # substring: right; strict: wrong
]


def eval_files(tmp_path):
    raw = write(tmp_path / "avqa-test.json", [item(q, "00000272", pair, "Q?", [], a) for q, pair, a, _, _ in TEST])
    official = write(tmp_path / "preds.json", [{"image_id": "00000272", "pred": p, "question": "Q?", "answer": fa}
                                               for _, _, _, p, fa in TEST])
    # pave eval's report: sorted by id (not file order), its "answer" is the annotation's
    report = write(tmp_path / "report.json", {"metrics": {}, "predictions": [
        {"id": str(q), "answer": a, "prediction": p} for q, _, a, p, _ in sorted(TEST, key=lambda t: str(t[0]))]})
    return raw, official, report


def score(pave, *argv):
    code, out, err = pave("score", "music-avqa", *argv)
    assert code == 0, err
    return json.loads(out)


def test_official_substring_rule_with_targets_from_the_prediction_file(tmp_path, pave):
    raw, official, _ = eval_files(tmp_path)
    m = score(pave, "--annotations", raw, "--predictions", official)
    # right: 10, 11, 13, 17, 18. Audio 2/2; Visual 1/2; AV 2/5 (14 wrong by the file's target); overall 5/9
    assert {k: m[k] for k in ("Audio Counting", "Audio Cmp", "Audio", "Visual Counting", "Visual Loc", "Visual")} == \
        {"Audio Counting": 100.0, "Audio Cmp": 100.0, "Audio": 100.0, "Visual Counting": 0.0, "Visual Loc": 100.0,
         "Visual": 50.0}
    assert [m[k] for k in ("AV Ext", "AV counting", "AV Loc", "AV Cmp", "AV Temporal", "AV")] == \
        [0.0, 0.0, 0.0, 100.0, 100.0, 40.0]
    assert m["Overall"] == 55.56  # 5/9 = 55.555...% printed with 2 decimals
    assert m["counts"]["Overall"] == 9 and m["counts"]["AV"] == 5 and m["counts"]["Visual Loc"] == 1


def test_pave_report_is_joined_by_id_and_strict_matches_whole_answers(tmp_path, pave):
    raw, official, report = eval_files(tmp_path)
    m = score(pave, "--annotations", raw, "--predictions", report)
    # as above, but the target of 14 is the annotation's "yes" (the report's answer): AV 3/5, overall 6/9
    assert (m["AV Ext"], m["AV"], m["Overall"]) == (100.0, 60.0, 66.67)
    strict = score(pave, "--annotations", raw, "--predictions", official, "--strict")
    # right: 12, 13, 14 (target from the annotations), 15, 16, 17; wrong: 10, 11, 18
    assert [strict[k] for k in ("Audio", "Visual", "AV Ext", "AV counting", "AV Loc", "AV Temporal", "AV")] == \
        [0.0, 100.0, 100.0, 100.0, 100.0, 0.0, 80.0]
    assert strict["Overall"] == 66.67  # 6/9


def test_an_empty_type_is_null_not_a_division_by_zero(tmp_path, pave):
    raw = write(tmp_path / "avqa-test.json", [item(1, "00000272", ["Visual", "Location"], "Where?", [], "left")])
    preds = write(tmp_path / "preds.json", [{"image_id": "00000272", "pred": "left", "answer": "left"}])
    m = score(pave, "--annotations", raw, "--predictions", preds)
    assert m["Audio Counting"] is None and m["AV"] is None and m["counts"]["Audio"] == 0
    assert m["Visual Loc"] == m["Visual"] == m["Overall"] == 100.0


def test_test_split_is_not_duplicated(tmp_path, pave):
    raw = write(tmp_path / "avqa-test.json", TRAIN[:3])
    assert pave("data", "convert", "music-avqa", raw, "--out", tmp_path / "out")[0] == 0
    # no --videos: nothing checked, no manifest; test questions once each, in file order
    assert [s["id"] for s in read(tmp_path / "out/test.json")] == ["1", "2", "3"]
    assert not (tmp_path / "out/manifest.jsonl").exists()


def test_official_predictions_in_another_order_are_refused_naming_the_first_mismatch(tmp_path, pave):
    # The official format is joined by position; the video id each entry carries must be its question's.
    raw = write(tmp_path / "avqa-test.json", [item(1, "00000272", ["Visual", "Location"], "Where?", [], "left"),
                                              item(2, "00000273", ["Visual", "Location"], "Where?", [], "right"),
                                              item(3, "00000274", ["Visual", "Location"], "Where?", [], "left")])
    preds = write(tmp_path / "preds.json", [{"image_id": vid, "pred": pred, "question": "Where?"}
                                            for vid, pred in (("00000273", "right"), ("00000272", "left"),
                                                              ("00000274", "left"))])
    one_line_error(pave("score", "music-avqa", "--annotations", raw, "--predictions", preds, "--strict"),
                   f"{preds} entry 0: video id (image_id) '00000273' where question '1' of {raw} has '00000272'",
                   "keep the question file's order")


def test_converting_again_into_the_same_out_leaves_only_this_conversions_files(tmp_path, pave):
    train, test = write(tmp_path / "avqa-train.json", TRAIN[:3]), write(tmp_path / "avqa-test.json", TRAIN[:3])
    assert pave("data", "convert", "music-avqa", train, test, "--out", tmp_path / "out")[0] == 0
    assert (tmp_path / "out/test.json").exists()
    code, out, _ = pave("data", "convert", "music-avqa", train, "--out", tmp_path / "out")
    assert code == 0 and out.strip().endswith("; removed test.json of an earlier conversion"), out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dropped.jsonl", "train.json"]
    assert [s["id"] for s in read(tmp_path / "out/train.json")] == ["1", "1_dup", "2", "3", "3_dup"]
