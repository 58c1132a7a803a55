import json

import pytest

from pipelines.annotations import AnnotationError, Sample, check_against_store, load_annotations


def entry(sample_id="s0", video="v0000", answer="high"):
    return {
        "id": sample_id,
        "video": video,
        "conversations": [
            {"from": "human", "value": "<video>\nWhat is the pitch?"},
            {"from": "gpt", "value": answer},
        ],
    }


def write(tmp_path, payload):
    path = tmp_path / "ann.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_valid_file_parses_roles_and_answer(tmp_path):
    [sample] = load_annotations(write(tmp_path, [entry(answer="low")]))
    assert sample.video_id == "v0000"
    assert sample.turns == (("user", "<video>\nWhat is the pitch?"), ("assistant", "low"))
    assert sample.answer == "low"


def test_malformed_json_is_refused(tmp_path):
    with pytest.raises(AnnotationError, match="not a readable JSON"):
        load_annotations(write(tmp_path, "[{"))


@pytest.mark.parametrize("video", ["../../etc/passwd", "/etc/passwd", "a/../../b", "", None])
def test_path_traversal_and_bad_ids_are_refused(tmp_path, video):
    with pytest.raises(AnnotationError, match="entry 1 \\(id 'bad'\\).*'video'"):
        load_annotations(write(tmp_path, [entry(), entry("bad", video)]))


def test_every_problem_is_listed_at_once(tmp_path):
    broken = entry("s1")
    broken["conversations"][-1]["from"] = "human"
    with pytest.raises(AnnotationError) as err:
        load_annotations(write(tmp_path, [entry(), broken, entry("s0"), 7]))
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "last turn must be the answer" in message and "duplicate id 's0'" in message
    assert "entry 3: expected an object" in message


def test_unknown_videos_and_missing_modalities_are_named():
    samples = [Sample("a", "v1", (("assistant", "x"),)), Sample("b", "v9", (("assistant", "y"),))]
    check_against_store(samples, {"video": {"v1", "v9"}}, "ann.json")
    with pytest.raises(AnnotationError, match="1 video\\(s\\) have no 'audio' features: v9"):
        check_against_store(samples, {"video": {"v1", "v9"}, "audio": {"v1"}}, "ann.json")
    with pytest.raises(AnnotationError, match="no committed '3d' features"):
        check_against_store(samples, {"3d": set()}, "ann.json")
