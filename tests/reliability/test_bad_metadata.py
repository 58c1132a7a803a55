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


CASES = {  # name -> (annotation file text from the corpus's valid entries, --sides, phrase of the message)
    "malformed JSON": (lambda entries: json.dumps(entries)[:-20], "audio", "not a readable JSON file"),
    "unknown video": (lambda entries: json.dumps(unknown_video(entries)), "audio",
                      "1 video(s) have no 'video' features: v9999"),
    "path traversal id": (lambda entries: json.dumps(path_traversal(entries)), "audio",
                          "(id 'escape-q0'): 'video' must be a store item id (letters, digits, _ . - /, no '..'), "
                          "got '../../etc/passwd'"),
    "modality the store lacks": (json.dumps, "audio,hfr", "has no 'hfr' features (it has: audio, video)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pave_train_refuses_before_training_starts(corpus, reference, tmp_path, case):
    text, sides, phrase = CASES[case]
    annotations = tmp_path / "annotations.json"
    annotations.write_text(text(json.loads((corpus / "annotations" / "train.json").read_text())))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:  # the tiny base would be built once the inputs pass
        main(["train", "--store", str(reference[0]), "--annotations", str(annotations), "--out", str(out),
              "--sides", sides, "--steps", "2", "--tiny-base"])
    assert str(raised.value).startswith("pave train: ") and phrase in str(raised.value)
    assert not (out / "ray").exists() and not (out / "base_model").exists()
