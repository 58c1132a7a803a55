"""A paper task from its raw files to a score, on the CPU, one per task family, through the `pave` commands a user
types: convert -> materialize (or import released features) -> train a few steps -> eval -> score. The media are
the session corpus's takes (a tone whose pitch, low or high, is the answer); the raw files are shaped like the
real ones (tests/tasks/test_*.py check their every quirk)."""
import json
import shutil

import pytest
import torch

from pipelines.annotations import load_annotations
from taskdata import read, write

pytestmark = pytest.mark.timeout(900)
TRAIN_FLAGS = ["--tiny-base", "--steps", "4", "--batch-size", "4", "--lora-r", "4", "--patch-d-model", "16",
               "--report-every", "2", "--checkpoint-every", "4", "--model.newline", "one"]


def pitches(corpus) -> dict[str, str]:
    """Corpus video id -> the answer its audio reveals."""
    samples = [s for split in ("train", "eval") for s in load_annotations(corpus / "annotations" / f"{split}.json")]
    return {s.video_id: s.answer for s in samples}


def avqa_item(qid: int, vid: str, answer: str) -> dict:
    return {"video_id": vid, "question_id": qid, "type": json.dumps(["Audio", "Comparative"]),
            "question_content": "Is the <Object> low or high?", "templ_values": json.dumps(["tone"]),
            "question_deleted": 0, "anser": answer}


def test_music_avqa_from_raw_files_to_the_official_scores(pave, ray_local, corpus, tmp_path):
    answers = pitches(corpus)
    videos = tmp_path / "MUSIC-AVQA" / "MUSIC-AVQA-videos-Real"
    videos.mkdir(parents=True)
    ids = {f"0000000{k}": video for k, video in enumerate(sorted(answers))}  # real clips: numeric ids
    for vid, video in ids.items():
        shutil.copy(corpus / "videos" / f"{video}.mp4", videos / f"{vid}.mp4")
    raw_train = write(tmp_path / "avqa-train.json", [avqa_item(k, vid, answers[video])
                                                     for k, (vid, video) in enumerate(ids.items())])
    raw_test = write(tmp_path / "avqa-test.json", [avqa_item(100 + k, vid, answers[video])
                                                   for k, (vid, video) in enumerate(list(ids.items())[:4])])
    data, store, run, report = (tmp_path / name for name in ("data", "store", "run", "eval"))

    code, out, err = pave("data", "convert", "music-avqa", raw_train, raw_test, "--out", data,
                          "--videos", tmp_path / "MUSIC-AVQA")
    assert code == 0, err
    assert len(read(data / "train.json")) == 2 * len(ids)  # Audio questions are doubled for training
    assert pave("materialize", "--input", data / "manifest.jsonl", "--store", store, "--modalities", "video,audio",
                "--frames", "4")[0] == 0
    assert pave("train", "--store", store, "--annotations", data / "train.json", "--sides", "audio", "--out", run,
                *TRAIN_FLAGS)[0] == 0
    code, out, err = pave("eval", "--checkpoint", run / "final", "--annotations", data / "test.json", "--out",
                          report, "--task", "music-avqa", "--task-annotations", raw_test, "--max-new-tokens", "4")
    assert code == 0, err
    scores = read(report / "scores.json")
    predictions = read(report / "report.json")["predictions"]
    # the official rule, by hand: right when the answer is a substring of the lower-cased prediction
    right = sum(p["answer"] in p["prediction"].lower() for p in predictions)
    assert len(predictions) == 4 and scores["Overall"] == round(100 * right / 4, 2) == scores["Audio"]
    assert scores["counts"]["Audio Cmp"] == 4 and scores["Visual"] is None
    code, out, _ = pave("score", "music-avqa", "--annotations", raw_test, "--predictions", report / "report.json")
    assert json.loads(out) == scores  # `pave score` on the same predictions says the same


def test_enhanced_video_from_raw_files_with_imported_languagebind_features(pave, ray_local, corpus, tmp_path):
    answers = pitches(corpus)
    videos = tmp_path / "LLaVA-Video-178K" / "1_2_m_academic_v0_1" / "academic_source" / "activitynet"
    videos.mkdir(parents=True)
    raw = []
    for video in sorted(answers):
        shutil.copy(corpus / "videos" / f"{video}.mp4", videos / f"{video}.mp4")
        raw.append({"id": video, "video": f"academic_source/activitynet/{video}.mp4", "conversations": [
            {"from": "human", "value": "<image>\nIs the tone low or high?"}, {"from": "gpt", "value": answers[video]}]})
    raw_file = write(tmp_path / "1_2_m_academic_oe_v0_1_qa_processed.json", raw)
    data, store, run = tmp_path / "data", tmp_path / "store", tmp_path / "run"
    code, out, err = pave("data", "convert", "llava-video", raw_file, "--out", data,
                          "--videos", tmp_path / "LLaVA-Video-178K" / "1_2_m_academic_v0_1")
    assert code == 0, err
    samples = read(data / "train.json")
    assert {s["video"] for s in samples} == {f"activitynet/{video}" for video in answers}  # as the release names them
    # the release's LanguageBind files: 8 frames x (CLS + 2 x 2 pooled patches) per video, named by that id
    release = tmp_path / "languagebind_feat"
    for s in samples:
        (release / s["video"]).parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.randn(8, 5, 16).half(), release / f"{s['video']}.pt")
    code, out, _ = pave("store", "import", "languagebind", release, "--store", store, "--manifest",
                        data / "manifest.jsonl")
    assert code == 0 and f"{len(answers)} imported" in out
    assert pave("materialize", "--input", data / "manifest.jsonl", "--store", store, "--frames", "4")[0] == 0
    assert pave("train", "--store", store, "--annotations", data / "train.json", "--sides", "hfr", "--out", run,
                *TRAIN_FLAGS)[0] == 0
    assert pave("eval", "--checkpoint", run / "final", "--annotations", data / "train.json", "--out",
                tmp_path / "eval", "--max-new-tokens", "4")[0] == 0
    assert len(read(tmp_path / "eval" / "report.json")["predictions"]) == len(samples)
    code, _, err = pave("eval", "--checkpoint", run / "final", "--annotations", data / "train.json", "--out",
                        tmp_path / "eval2", "--task", "llava-video", "--task-annotations", raw_file)
    assert code == 2 and "scored by lmms-eval" in err  # refused before any generation


def test_scanqa_from_raw_files_frame_folders_and_imported_llava_3d_features(pave, ray_local, tmp_path):
    from matplotlib.image import imsave

    scenes = [f"scene000{k}_00" for k in range(4)]
    frames, release = tmp_path / "posed_images_new", tmp_path / "video_features_new"
    colours = torch.rand(len(scenes), 4, 3, generator=torch.Generator().manual_seed(0))
    for k, scene in enumerate(scenes):  # 4 posed views per scene, named by frame number as ScanNet's are
        (frames / scene).mkdir(parents=True)
        for view in range(4):
            imsave(frames / scene / f"{20 * view}.png", colours[k, view].expand(24, 32, 3).numpy())
        (release / scene).mkdir(parents=True)
        torch.save(torch.randn(1, 4 * 576, 16).half(), release / scene / "video_features.pt")  # 4 views x 24 x 24

    def raw(split: str, k: int, scene: str) -> dict:
        return {"answers": [("brown", "white")[k % 2]], "object_ids": [1], "object_names": ["chair"],
                "question": "What colour is the chair?", "question_id": f"{split}-{scene}-{k}", "scene_id": scene}
    raw_train = write(tmp_path / "ScanQA_v1.0_train.json", [raw("train", k, s) for k, s in enumerate(scenes)])
    raw_val = write(tmp_path / "ScanQA_v1.0_val.json", [raw("val", k, s) for k, s in enumerate(scenes[:2])])
    data, store, run, report = (tmp_path / name for name in ("data", "store", "run", "eval"))

    code, out, err = pave("data", "convert", "scanqa", raw_train, raw_val, "--out", data, "--videos", frames)
    assert code == 0, err
    assert pave("materialize", "--input", data / "manifest.jsonl", "--store", store, "--frames", "4")[0] == 0
    code, out, _ = pave("store", "import", "llava-3d", release, "--store", store)
    assert code == 0 and "4 imported" in out
    assert pave("train", "--store", store, "--annotations", data / "train.json", "--sides", "3d", "--out", run,
                *TRAIN_FLAGS)[0] == 0
    code, out, err = pave("eval", "--checkpoint", run / "final", "--annotations", data / "val.json", "--out", report,
                          "--task", "scanqa", "--task-annotations", raw_val, "--max-new-tokens", "4")
    assert code == 0, err
    scores = read(report / "scores.json")
    code, out, _ = pave("score", "scanqa", "--annotations", raw_val, "--predictions", report / "report.json")
    assert json.loads(out) == scores and 0 <= scores["[scanqa] EM1"] <= scores["[scanqa] EM1_refined"] <= 1
