"""Bad annotations or a store without the requested features stop `pave train` with an error that says what is
wrong, before any training starts: no base model is built and no Ray Train run (checkpoint directory) exists.
The validation rules themselves are tested in tests/training/test_annotations.py."""
import json

import pytest

from jobs.cli import main


def unknown_video(entries):
    return entries + [{**entries[0], "id": "ghost-q0", "video": "v9999"}]


def path_traversal(entries):
    return entries + [{**entries[0], "id": "escape-q0", "video": "../../etc/passwd"}]


def edit_turns(k: int, edit):
    """The entries with entry 1's turn k changed by `edit` (text -> text)."""
    def change(entries):
        turns = entries[1]["conversations"]
        turns[k] = {**turns[k], "value": edit(turns[k]["value"])}
        return json.dumps(entries)
    return change


def answer_only(entries):
    entries[2]["conversations"] = entries[2]["conversations"][-1:]
    return json.dumps(entries)


CASES = {  # name -> (annotation file text from the corpus's valid entries, extra flags, phrase of the message)
    "malformed JSON": (lambda entries: json.dumps(entries)[:-20], [], "not a readable JSON file"),
    "unknown video": (lambda entries: json.dumps(unknown_video(entries)), [],
                      "1 video(s) have no 'video' or 'audio' features: v9999"),
    "path traversal id": (lambda entries: json.dumps(path_traversal(entries)), [],
                          "(id 'escape-q0'): 'video' must be a store item id (non-empty text without control characters, "
                          "whitespace at either end, a backslash, a leading '/', or '.' or '..' between slashes), "
                          "got '../../etc/passwd'"),
    "modality the store lacks": (json.dumps, ["--sides", "audio,hfr"], "has no 'hfr' features (it has: audio, video)"),
    "two video markers": (edit_turns(0, lambda text: f"{text} <image>"), [],  # the corpus's question has <video>
                          "entry 1 (id 'v0002-q0'): turn 0 holds 2 video markers; a sample has one video"),
    "video marker in the answer": (edit_turns(-1, lambda text: f"{text} <video>"), [],
                                   "entry 1 (id 'v0002-q0'): turn 1 holds a video marker"),
    "no question": (answer_only, [], "entry 2 (id 'v0003-q0'): no question ('from': 'human') before the answer"),
    "batch larger than the data": (json.dumps, ["--batch-size", "1000"],
                                   "samples cannot fill one batch of 1000 on each of 1 worker(s)"),
    "zero steps": (json.dumps, ["--steps", "0"], "--optim.steps must be at least 1, got 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pave_train_refuses_before_training_starts(corpus, reference, tmp_path, capsys, case):
    text, flags, phrase = CASES[case]
    annotations = tmp_path / "annotations.json"
    annotations.write_text(text(json.loads((corpus / "annotations" / "train.json").read_text())))
    out = tmp_path / "run"
    code = main(["train", "--store", str(reference[0]), "--annotations", str(annotations), "--out", str(out),
                 "--sides", "audio", "--steps", "2", "--tiny-base", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pave train: ") and phrase in err
    assert not (out / "ray").exists() and not (out / "base_model").exists()
