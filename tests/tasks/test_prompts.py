"""The eval prompt of each paper task as `pave eval` renders it (the converted annotation through the Collator with
for_generation=True) against the official prompt, written out here from docs/PAPER_TASKS.md: the system line, ChatML
turns, the question as the official eval builds it, "<image>\\n" before the first question. The official code turns
<image> into the one video placeholder id; we write it <video>, our tokenizer's video token. So the texts must be
equal up to that spelling, and the token ids equal with the placeholder where the official tokenization puts it."""
import json

import pytest
from taskdata import write

from model.collate import Collator
from model.llava import VideoLayout
from model.tiny import build_tiny_tokenizer
from pipelines.annotations import load_annotations

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def music_avqa(qid, template, values, answer):
    return {"video_id": "00000272", "question_id": qid, "type": '["Audio-Visual", "Temporal"]',
            "question_content": template, "templ_values": json.dumps(values), "question_deleted": 0,
            "anser": answer}


# task, raw file (name, content), converted file, the official eval prompt of its first sample
CASES = [
    ("music-avqa", ("avqa-test.json", [music_avqa(7, "Is the <Object> on the <LR> more rhythmic than the <Object> on "
                                                 "the <LR>? ", ["violin", "left", "cello", "right"], "yes")]),
     "test.json",
     # the filled template as it is (its trailing space too), nothing appended
     SYSTEM + "<|im_start|>user\n<image>\nIs the violin on the left more rhythmic than the cello on the right? "
              "<|im_end|>\n<|im_start|>assistant\n"),
    ("avsd", ("mock_test_set4DSTC10-AVSD_from_DSTC7_singref.json", {"dialogs": [{
        "image_id": "QRM9W", "summary": "A man cooks.", "caption": "cooking", "dialog": [
            {"question": "what is the man doing?", "answer": "he is cooking."},
            {"question": "is he alone?", "answer": "yes, he is."},
            {"question": "does he speak?", "answer": "no, he does not."}]}]}),
     "test.json",
     # every earlier turn with its reference answer, the marker before the first question only, no summary/caption
     SYSTEM + "<|im_start|>user\n<image>\nwhat is the man doing?<|im_end|>\n<|im_start|>assistant\nhe is cooking."
              "<|im_end|>\n<|im_start|>user\nis he alone?<|im_end|>\n<|im_start|>assistant\nyes, he is.<|im_end|>\n"
              "<|im_start|>user\ndoes he speak?<|im_end|>\n<|im_start|>assistant\n"),
    ("scanqa", ("ScanQA_v1.0_val.json", [{"answers": ["brown", "dark brown"], "object_ids": [5],
                                          "object_names": ["chair"], "question": "What color is the chair?",
                                          "question_id": "val-scene0011-0", "scene_id": "scene0011_00"}]),
     "val.json",
     SYSTEM + "<|im_start|>user\n<image>\nWhat color is the chair?<|im_end|>\n<|im_start|>assistant\n"),
    ("sqa3d", ("SQA_test.json", [{"answers": ["table"], "object_ids": [], "object_names": [],
                                  "question": "What is in front of me?", "situation": "I am sitting on the bed.",
                                  "question_id": 220602000002, "scene_id": "scene0011_00",
                                  "position": [0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0]}]),
     "test.json",
     # situation, one space, question
     SYSTEM + "<|im_start|>user\n<image>\nI am sitting on the bed. What is in front of me?<|im_end|>\n"
              "<|im_start|>assistant\n"),
    # training data only (its benchmark, VideoMME, runs in lmms-eval): the question as the raw entry writes it
    ("llava-video", ("1_2_m_academic_v0_1/1_2_m_academic_oe_v0_1_qa_processed.json", [{
        "id": "v_a", "conversations": [{"from": "human", "value": "<image>\nWhat does the man do after he opens the "
                                                                   "door?"},
                                       {"from": "gpt", "value": "He walks into the kitchen."}],
        "data_source": "1_2_m_academic_v0_1", "video": "academic_source/activitynet/v_a.mp4"}]),
     "train.json",
     SYSTEM + "<|im_start|>user\n<image>\nWhat does the man do after he opens the door?<|im_end|>\n"
              "<|im_start|>assistant\n"),
]


@pytest.fixture(scope="module")
def collator():
    tokenizer = build_tiny_tokenizer()
    return Collator(tokenizer, tokenizer.convert_tokens_to_ids("<video>"), VideoLayout(grid=2), (),
                    {"video": "float32"}, for_generation=True)


def official_ids(tokenizer, prompt: str, video_id: int) -> list[int]:
    """The official tokenization: the text on each side of <image> tokenized on its own, the placeholder between."""
    before, after = prompt.split("<image>")
    return [*tokenizer(before, add_special_tokens=False)["input_ids"], video_id,
            *tokenizer(after, add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("task, raw, converted, official", CASES, ids=[case[0] for case in CASES])
def test_eval_prompt_is_the_official_one(tmp_path, pave, collator, task, raw, converted, official):
    name, content = raw
    code, _, err = pave("data", "convert", task, write(tmp_path / name, content), "--out", tmp_path / "out")
    assert code == 0, err
    turns = [list(turn) for turn in load_annotations(tmp_path / "out" / converted)[0].turns]
    assert collator.prompt(turns) == official.replace("<image>", "<video>")
    ids, _ = collator.encode(turns, 1)
    assert ids == official_ids(collator.tokenizer, official, collator.video_token_id)
