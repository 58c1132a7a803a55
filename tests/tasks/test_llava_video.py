"""LLaVA-Video-178K: the first 2 entries per video id of each file ("_2pv"), conversations untouched, store ids named
as the official feature files (first path component dropped); worked out by hand from docs/PAPER_TASKS.md §5."""
from taskdata import one_line_error, read, read_lines, write


def entry(vid, video, question="<image>\nWhat happens?", answer="A dog runs."):
    return {"id": vid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            "data_source": "1_2_m_academic_v0_1", "video": video}


ACADEMIC = "academic_source/activitynet/v_a.mp4"
YOUTUBE = "liwei_youtube_videos/videos/youtube_video_2024/ytb_b.mp4"


def test_first_two_per_video_and_official_feature_names(tmp_path, pave):
    first = write(tmp_path / "1_2_m_academic_v0_1/1_2_m_academic_oe_v0_1_qa_processed.json", [
        entry("v_a", ACADEMIC, answer="first"), entry("v_a", ACADEMIC, answer="second"),
        entry("v_a", ACADEMIC, answer="third"),  # third of its id: not in the subset
        entry("ytb_b", YOUTUBE),
        {**entry("v_a", ACADEMIC), "conversations": [{"from": "human", "value": "<image>\nQ?"}]},  # no answer
        entry("v_c", ACADEMIC.replace("v_a", "v_c"), answer="see <image>"),  # a marker in the answer
    ])
    second = write(tmp_path / "2_3_m_youtube_v0_1/2_3_m_youtube_oe_v0_1_qa_processed.json", [
        entry("ytb_d", YOUTUBE.replace("ytb_b", "ytb_d"))])
    for root, video in (("1_2_m_academic_v0_1", ACADEMIC), ("1_2_m_academic_v0_1", YOUTUBE),
                        ("2_3_m_youtube_v0_1", YOUTUBE.replace("ytb_b", "ytb_d"))):
        write(tmp_path / root / video, [])
    code, out, err = pave("data", "convert", "llava-video", first, second, "--out", tmp_path / "out",
                          "--videos", tmp_path / "1_2_m_academic_v0_1", "--videos", tmp_path / "2_3_m_youtube_v0_1")
    assert code == 0, err
    samples = read(tmp_path / "out/train.json")
    assert [(s["id"], s["video"]) for s in samples] == [
        ("v_a_0", "activitynet/v_a"), ("v_a_1", "activitynet/v_a"), ("ytb_b_0", "videos/youtube_video_2024/ytb_b"),
        ("ytb_d_0", "videos/youtube_video_2024/ytb_d")]
    assert samples[1]["conversations"] == entry("v_a", ACADEMIC, answer="second")["conversations"]  # untouched
    reasons = [d["reason"] for d in read_lines(tmp_path / "out/dropped.jsonl")]
    assert len(reasons) == 3 and "first 2 per id" in reasons[0] and "ending with the answer" in reasons[1] \
        and "video marker" in reasons[2]
    assert read_lines(tmp_path / "out/manifest.jsonl")[0] == {
        "id": "activitynet/v_a", "video": str(tmp_path / "1_2_m_academic_v0_1" / ACADEMIC)}


def test_llava_video_has_no_scorer(tmp_path, pave):
    one_line_error(pave("score", "llava-video", "--annotations", tmp_path / "a.json", "--predictions",
                        tmp_path / "p.json"), "no scorer here", "lmms-eval")
