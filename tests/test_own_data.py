"""The README's "Your own data" section, followed literally: its JSON blocks are written as the files it names, the
clips its manifest lists are made (tiny H.264/AAC, tests/reliability/media_cases.py), and its commands run, up to
the eval report; then each refusal the section promises: a manifest with an unknown key, two paths read as one
clip id, `pave data check` problems, a conversion that keeps nothing."""
import json
import re
import shlex
import statistics
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jobs.cli import main
from pipelines.annotations import AnnotationError, load_annotations
from pipelines.sources import MANIFEST_ROW, read_items
from tests.reliability.media_cases import HIGH_HZ, LOW_HZ, Media

pytestmark = pytest.mark.timeout(600)
README = Path(__file__).parents[1] / "README.md"
# What the test adds to the README's commands, for speed on a CPU: the README's flags stay as they are.
FAST = {("materialize",): ["--frames", "4"],
        ("train",): ["--steps", "2", "--batch-size", "2", "--lora-r", "4", "--patch-d-model", "16"],
        ("eval",): ["--max-new-tokens", "4"]}


def section() -> str:
    return README.read_text().split("\n## Your own data\n", 1)[1].split("\n## ", 1)[0]


def readme_files() -> dict[str, str]:
    """Path -> the JSON block right under the line that names the file (`mydata/train.json`:)."""
    return {m[1]: m[2] for m in re.finditer(r"`([\w/.-]+\.jsonl?)`:\n\n```jsonl?\n(.*?)```", section(), re.S)}


def readme_commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", section(), re.S)[1]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("pave ")]


def runnable(argv: list[str]) -> list[str]:
    """A README command as the test runs it: --tiny-base for the README's BASE, and the FAST flags."""
    argv = list(argv)
    if "--base-model" in argv:
        k = argv.index("--base-model")
        argv[k:k + 2] = ["--tiny-base"]
    return argv + next((flags for command, flags in FAST.items() if tuple(argv[:len(command)]) == command), [])


def token_row(label: str, counts: list[int]) -> str:
    """The pattern of `pave data check`'s token table row of these per-sample counts: min, median, max."""
    return rf"^  {re.escape(label)} +{min(counts)} +{int(statistics.median(counts))} +{max(counts)}$"


@pytest.fixture(scope="module")
def project(tmp_path_factory, ray_local):
    """The README's files and clips in a new folder, and its first command (materialize) run there."""
    root = tmp_path_factory.mktemp("own")
    files = readme_files()
    assert sorted(files) == ["mydata/eval.json", "mydata/manifest.jsonl", "mydata/train.json"]
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    rows = [json.loads(line) for line in files["mydata/manifest.jsonl"].splitlines()]
    for k, row in enumerate(rows):
        (root / "mydata" / row["video"]).parent.mkdir(parents=True, exist_ok=True)
        Media(hz=(LOW_HZ, HIGH_HZ)[k % 2]).write(root / "mydata" / row["video"])
    commands = readme_commands()
    assert [argv[:2] for argv in commands] == [["materialize", "--input"], ["data", "check"],
                                               ["train", "--store"], ["eval", "--annotations"]]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(runnable(commands[0])) == 0
    return root, rows, commands


def test_the_readme_section_from_files_to_an_eval_report(project, pave, monkeypatch):
    root, rows, commands = project
    monkeypatch.chdir(root)
    _, check, train, evaluate = commands
    code, out, err = pave(*runnable(check))
    assert code == 0, err
    train_samples = load_annotations(root / "mydata" / "train.json")
    counts = f"mydata/train.json: {len(train_samples)} samples on 2 videos; mydata/eval.json: 1 samples on 1 videos"
    assert counts in out, out
    assert re.search(r"^  video +[0-9a-f]{16} +3 +0 +0$", out, re.M) and re.search(r"^  audio +[0-9a-f]{16} +3 +0 +0$",
                                                                                     out, re.M), out
    assert "eval/train overlap: 0 videos, 0 samples with the same video and question" in out
    # 4 stored frames of the tiny encoder's 8 x 8 patches: 4 x 4 pooled tokens a frame, a newline after each row
    assert re.search(token_row("train video", [80]), out, re.M), out
    words = [sum(len(text.replace("<video>", "").split()) for _, text in s.turns) for s in train_samples]
    assert re.search(token_row("train text (words)", words), out, re.M), out
    assert f"trainable: {len(train_samples)} of {len(train_samples)} samples of mydata/train.json" in out

    assert pave(*runnable(train))[0] == 0
    base = root / "runs" / "mine" / "base_model"  # the tiny base pave train made: its tokenizer counts the text
    code, out, err = pave(*runnable(check), "--base-model", base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokens = [sum(len(tokenizer(text.replace("<video>", "").strip(), add_special_tokens=False).input_ids)
                  for _, text in s.turns) for s in train_samples]
    assert code == 0 and tokens != words, err
    assert re.search(token_row("train text (tokens)", tokens), out, re.M), out
    code, out, err = pave(*runnable(evaluate))
    assert code == 0, err
    report = json.loads((root / "runs" / "mine" / "eval" / "report.json").read_text())
    expected = [{"id": s.id, "answer": s.answer} for s in load_annotations(root / "mydata" / "eval.json")]
    assert [{k: p[k] for k in ("id", "answer")} for p in report["predictions"]] == expected
    assert (root / "runs" / "mine" / "eval" / "report.md").is_file()


def test_data_check_names_missing_items_and_nothing_to_train(project, pave, tmp_path):
    root = project[0]
    train = json.loads((root / "mydata" / "train.json").read_text())
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{**entry, "video": "garden_09"} for entry in train]))
    code, out, err = pave("data", "check", "--annotations", missing, "--store", root / "mystore", "--sides", "hfr")
    assert code == 2 and f"trainable: 0 of {len(train)} samples" in out, out
    assert err.splitlines() == [
        f"pave data check: missing items: {root / 'mystore'} has no 'hfr' features (it has: audio, video); {missing}: "
        "1 video(s) have no 'video' features: garden_09",
        f"pave data check: nothing to train: no sample of {missing} has all its features in {root / 'mystore'}"]

    twice = tmp_path / "twice.json"  # the eval file's question twice, under one id: what pave train refuses too
    twice.write_text(json.dumps(json.loads((root / "mydata" / "eval.json").read_text()) * 2))
    code, out, err = pave("data", "check", "--annotations", root / "mydata" / "train.json", "--eval-annotations",
                          twice, "--store", root / "mystore")
    assert code == 2 and "entry 1: duplicate id 'street_03-q0'" in err and out == "", err


def test_repeated_questions_and_eval_overlap_are_reported(project, pave, tmp_path):
    root = project[0]
    train = json.loads((root / "mydata" / "train.json").read_text())
    held_out = tmp_path / "eval.json"  # a training question again, and a new one on a training clip
    held_out.write_text(json.dumps([{**train[0], "id": "e0"}, {**train[1], "id": "e1", "video": "kitchen_02"}]))
    code, out, err = pave("data", "check", "--annotations", root / "mydata" / "train.json", "--eval-annotations",
                          held_out, "--store", root / "mystore")
    assert code == 0, err
    assert "repeated questions (same video and question): train 0, eval 0" in out
    assert (f"eval/train overlap: 2 videos (e.g. 'kitchen_01'), 1 samples with the same video and question (e.g. eval "
            f"'e0' and train {train[0]['id']!r})") in out


def test_annotations_naming_files_are_read_as_ids_and_ambiguous_ones_refused(project, tmp_path, capsys):
    root = project[0]
    train = json.loads((root / "mydata" / "train.json").read_text())
    named = tmp_path / "named.json"  # as LLaVA-Video's files write it
    named.write_text(json.dumps([{**entry, "video": f"clips/{entry['video']}.mp4"} for entry in train]))
    samples = load_annotations(named)
    assert [s.video_id for s in samples] == [entry["video"] for entry in train]
    assert capsys.readouterr().err == (f"note: {named}: {len(train)} sample(s) name their video by file, read as the "
                                       "store id that the file name without the extension gives, e.g. "
                                       f"'clips/{train[0]['video']}.mp4' -> {train[0]['video']!r}\n")

    ambiguous = tmp_path / "ambiguous.json"
    ambiguous.write_text(json.dumps([{**train[0], "video": "a/kitchen_01.mp4"},
                                     {**train[1], "video": "b/kitchen_01.mp4"}]))
    with pytest.raises(AnnotationError) as refused:
        load_annotations(ambiguous)
    assert str(refused.value) == (
        f"{ambiguous}: 1 problem(s):\n  entry 1 (id {train[1]['id']!r}): 'video' 'b/kitchen_01.mp4' and entry 0's "
        "'a/kitchen_01.mp4' both read as store id 'kitchen_01' (the file name without the extension); give the videos "
        "distinct ids (a manifest's `id`) and write those")


def test_a_file_name_of_no_stored_clip_is_named_with_what_to_do(project, pave, tmp_path):
    root = project[0]
    entry = json.loads((root / "mydata" / "train.json").read_text())[0]
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([entry, {**entry, "id": "q9", "video": "clips/garden_09.mp4"}]))
    code, out, err = pave("data", "check", "--annotations", unknown, "--store", root / "mystore")
    assert code == 2 and "trainable: 1 of 2 samples" in out, out
    assert (f"pave data check: missing items: {unknown}: 1 video(s) have no 'video' or 'audio' features: garden_09 "
            "(sample 'q9' wrote 'clips/garden_09.mp4'); a video named by its file is read as the file name without the "
            "extension, the id a folder input gives it: materialize that file, or write the video's store id") in err


def test_a_manifest_with_no_usable_row_stops_in_one_line(ray_local, pave, tmp_path):
    manifest = tmp_path / "manifest.jsonl"  # `path` for `video`: the user test's manifest
    manifest.write_text("".join(json.dumps({"id": f"c{k}", "path": f"clips/c{k}.mp4"}) + "\n" for k in range(3)))
    code, out, err = pave("materialize", "--input", manifest, "--store", tmp_path / "store")
    assert code == 2 and err.splitlines() == [
        f"pave materialize: {manifest}: none of its 3 item(s) can be stored; the first: {manifest} line 1: unknown "
        f"key(s) 'path'; a manifest row is {MANIFEST_ROW}"], err
    assert not (tmp_path / "store").exists()


BAD_ROWS = {  # manifest row -> its failure reason (the good row's clip as the input)
    '{"id": 7, "video": "V"}': "'id' is 7, not a non-empty string",
    '{"id": "", "video": "V"}': "'id' is '', not a non-empty string",
    '{"id": "x", "video": ["V"]}': "'video' is ['/",  # then the path, and "not a path"
    '{"id": "x", "exo": [{"view": 1, "path": "V", "offset_s": "0.5"}]}': "'exo' is not a list of",
    '{"id": "x", "exo": [{"view": 1, "path": "V", "offset_s": 0, "camera": "side"}]}': "'exo' is not a list of",
    '{"id": "x", "video": "V\\u0000"}': "a path holds a NUL character",
}


def test_manifest_rows_with_values_of_other_types_are_failure_rows_naming_their_line(ray_local, tmp_path):
    clip = str(tmp_path / "clip.mp4")
    Media().write(Path(clip))
    manifest = tmp_path / "manifest.jsonl"
    lines = [json.dumps({"id": "good", "video": clip}), *(row.replace("V", clip) for row in BAD_ROWS)]
    manifest.write_text("\n".join(lines) + "\n")
    items = {item["source"]: item for item in read_items(str(manifest)).take_all()}
    assert items[f"{manifest} line 1"]["problem"] == "" and items[f"{manifest} line 1"]["video"] == clip
    for line, reason in enumerate(BAD_ROWS.values(), 2):
        problem = items[f"{manifest} line {line}"]["problem"]
        assert problem.startswith(f"{manifest} line {line}: {reason}"), problem
        assert problem.endswith(f"; a manifest row is {MANIFEST_ROW}")
    assert items[f"{manifest} line 2"]["id"] == f"{manifest} line 2"  # no usable id: named by its line


def test_a_conversion_that_keeps_no_sample_is_an_error_summarising_the_reasons(pave, tmp_path):
    raw = tmp_path / "1_2_m_academic_oe_v0_1_qa_processed.json"
    raw.write_text(json.dumps([{"id": f"v{k}", "video": f"academic/v{k}.mp4", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]} for k in range(3)]))
    (tmp_path / "videos").mkdir()
    code, out, err = pave("data", "convert", "llava-video", raw, "--out", tmp_path / "out", "--videos",
                          tmp_path / "videos")
    dropped = tmp_path / "out" / "dropped.jsonl"
    assert code == 2 and out == "" and err.splitlines() == [
        f"pave data: llava-video: no sample kept, all 3 raw item(s) were dropped: 3x video academic/v0.mp4 is "
        f"under none of --videos {tmp_path / 'videos'} (the official loader drops such samples); every item and its "
        f"reason: {dropped}"], err
    assert len(dropped.read_text().splitlines()) == 3
