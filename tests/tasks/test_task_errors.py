"""Bad input to `pave data convert` / `pave score` is one line on stderr naming the file or item and what to do, and
exit 2, through jobs.cli.main as a user runs it."""
import pytest
from taskdata import one_line_error, write


def music_test(tmp_path):
    return write(tmp_path / "avqa-test.json", [
        {"video_id": "00000272", "question_id": q, "type": '["Audio", "Counting"]', "question_content": "How many?",
         "templ_values": "[]", "question_deleted": 0, "anser": "two"} for q in (1, 2)])


@pytest.mark.parametrize("argv, fragments", [
    (["data", "convert", "musicavqa", "{tmp}/avqa-test.json", "--out", "{tmp}/out"],
     ["pave data: unknown task 'musicavqa'; one of music-avqa, avsd"]),
    (["data", "convert", "music-avqa", "{tmp}/nowhere/avqa-test.json", "--out", "{tmp}/out"],
     ["{tmp}/nowhere/avqa-test.json: no such file; expected MUSIC-AVQA's"]),
    (["data", "convert", "music-avqa", "{tmp}/avqa.json", "--out", "{tmp}/out"],
     ["{tmp}/avqa.json: cannot tell its split", "train, val or test"]),
    (["data", "convert", "scanqa", "{tmp}/notes_val.txt", "--out", "{tmp}/out"],
     ["{tmp}/notes_val.txt: not a JSON file", "ScanQA_v1.0_{{train,val}}.json"]),
    (["data", "convert", "music-avqa", "{tmp}/avqa-test.json", "--out", "{tmp}/out", "--videos", "{tmp}/none"],
     ["--videos {tmp}/none: no such folder"]),
    (["score", "music-avqa", "--annotations", "{tmp}/avqa-test.json", "--predictions", "{tmp}/extra.json"],
     ["{tmp}/extra.json: 1 prediction(s) for ids not in {tmp}/avqa-test.json: '99'"]),
    (["score", "music-avqa", "--annotations", "{tmp}/avqa-test.json", "--predictions", "{tmp}/short.json"],
     ["{tmp}/short.json: no prediction for 1 of the 2 questions", "'2'", "every question"]),
    (["score", "music-avqa", "--annotations", "{tmp}/avqa-test.json", "--predictions", "{tmp}/official_short.json"],
     ["{tmp}/official_short.json: 1 predictions for the 2 questions", "joined by position"]),
    (["score", "music-avqa", "--annotations", "{tmp}/avqa-test.json", "--predictions", "{tmp}/notes_val.txt"],
     ["{tmp}/notes_val.txt line 1: not JSON", "report.json"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, pave, argv, fragments):
    music_test(tmp_path)
    (tmp_path / "notes_val.txt").write_text("not json\n")
    write(tmp_path / "avqa.json", [])
    write(tmp_path / "extra.json", {"predictions": [{"id": i, "answer": "two", "prediction": "two"}
                                                    for i in ("1", "2", "99")]})
    write(tmp_path / "short.json", {"predictions": [{"id": "1", "answer": "two", "prediction": "two"}]})
    write(tmp_path / "official_short.json", [{"image_id": "00000272", "pred": "two", "answer": "two"}])
    one_line_error(pave(*[a.format(tmp=tmp_path) for a in argv]), *[f.format(tmp=tmp_path) for f in fragments])
