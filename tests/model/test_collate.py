"""Which tokens carry the loss under each --data.loss_tokens choice, on a byte-level tokenizer with Qwen2's special
tokens and chat template: the labelled stretches decoded, for a two-round conversation, and the "llava" labels
against LLaVA-OneVision's masking written out here on its own (each turn tokenized alone, assistant turns labelled
whole, then every <|im_start|>, <|im_end|> and newline id unmasked)."""
import json

import numpy as np
import pytest

from model.collate import Collator
from model.llava import IGNORE_INDEX, VideoLayout
from model.tiny import build_tiny_tokenizer

TURNS = [["user", "<image>\nwhat is the dog doing?"], ["assistant", "the dog runs."],
         ["user", "is there music?"], ["assistant", "yes, loud music."]]
VIDEO_TOKENS = 3  # the placeholder becomes this many video tokens, none labelled
LAYOUT = VideoLayout(grid=2)  # one pooled token per frame: a frame is 2 LLM tokens (with its grid newline)

# the labelled stretches, decoded (the sample's first token is never predicted, so "llava" starts after it)
ANSWER = ["the dog runs.<|im_end|>\n", "yes, loud music.<|im_end|>\n"]
LLAVA = ["\n",  # system\n
         "<|im_end|>\n<|im_start|>",  # end of the system turn, start of the user's
         "\n", "\n",  # user\n, then the newline after the video's tokens
         "<|im_end|>\n<|im_start|>assistant\nthe dog runs.<|im_end|>\n<|im_start|>",
         "\n",  # user\n
         "<|im_end|>\n<|im_start|>assistant\nyes, loud music.<|im_end|>\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def collator(tokenizer, **options) -> Collator:
    return Collator(tokenizer, tokenizer.convert_tokens_to_ids("<video>"), LAYOUT, (), {"video": "float32"},
                    **options)


def stretches(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The runs of labelled positions, decoded; a label is always the token at its own position (the loss shifts)."""
    found, run = [], []
    for token, label in zip(ids + [None], labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            found.append(tokenizer.decode(run))
            run = []
    return found


def official_llava(tokenizer, turns: list, n_video: int) -> tuple[list[int], list[int]]:
    """LLaVA-OneVision's preprocessing for Qwen as the official PAVE training runs it, on our tokenizer: the
    system turn and each turn tokenized on their own; system and user turns masked, assistant turns labelled whole;
    then <|im_start|>, <|im_end|> and the newline id unmasked wherever they are; the placeholder never labelled."""
    ids, labels = [], []
    for role, text in [("system", "You are a helpful assistant."), *turns]:
        turn = tokenizer(f"<|im_start|>{role}\n{text.replace('<image>', '<video>')}<|im_end|>\n",
                         add_special_tokens=False)["input_ids"]
        ids += turn
        labels += turn if role == "assistant" else [IGNORE_INDEX] * len(turn)
    unmasked = {*tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]), tokenizer.encode("\n")[0]}
    labels = [token if token in unmasked else label for token, label in zip(ids, labels)]
    at = ids.index(tokenizer.convert_tokens_to_ids("<video>"))
    return ids[:at] + ids[at:at + 1] * n_video + ids[at + 1:], labels[:at] + [IGNORE_INDEX] * n_video + labels[at + 1:]


@pytest.mark.parametrize("mode, expected", [("answer", ANSWER), ("llava", LLAVA)])
def test_labelled_tokens_of_each_mode(tokenizer, mode, expected):
    ids, labels = collator(tokenizer, loss_tokens=mode).encode(TURNS, VIDEO_TOKENS)
    assert stretches(tokenizer, ids, labels) == expected
    video = tokenizer.convert_tokens_to_ids("<video>")
    assert ids.count(video) == VIDEO_TOKENS
    assert all(label == IGNORE_INDEX for token, label in zip(ids, labels) if token == video)


def test_llava_labels_are_the_official_masking(tokenizer):
    ids, labels = collator(tokenizer, loss_tokens="llava").encode(TURNS, VIDEO_TOKENS)
    official_ids, official_labels = official_llava(tokenizer, TURNS, VIDEO_TOKENS)
    assert ids == official_ids
    # position 0 predicts nothing in either (the loss shifts); ours is masked so that packed samples stay apart
    assert labels[1:] == official_labels[1:] and official_labels[0] != IGNORE_INDEX and labels[0] == IGNORE_INDEX


def _masked(ids, labels, keep) -> list[int]:
    return [label if keep(k, token) else IGNORE_INDEX for k, (token, label) in enumerate(zip(ids, labels))]


def test_a_mutated_masking_fails_the_check(tokenizer):
    """The expected stretches tell the modes apart and catch a rule dropped from "llava"."""
    ids, labels = collator(tokenizer, loss_tokens="llava").encode(TURNS, VIDEO_TOKENS)
    newline, first_user = tokenizer.encode("\n")[0], ids.index(tokenizer.convert_tokens_to_ids("<|im_start|>"), 1)
    no_system_newlines = _masked(ids, labels, lambda k, token: not (token == newline and k < first_user))
    assert stretches(tokenizer, ids, no_system_newlines) != LLAVA
    assert stretches(tokenizer, ids, labels) != ANSWER


def test_packed_llava_samples_predict_nothing_across_their_boundary(tokenizer):
    batch = {"sample_id": ["a", "b"], "turns": [json.dumps(TURNS)] * 2,
             "video_tokens": [np.zeros((1, 1, 8), np.float32)] * 2, "video_t": [[0.0]] * 2}
    packed = collator(tokenizer, loss_tokens="llava", pack=True)(batch)
    one = len(packed["input_ids"][0]) // 2
    assert packed["input_ids"][0, one] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    # the first sample's closing newline is labelled; the second's <|im_start|> is not, though "llava" labels it
    # everywhere else: the first sample's last position would predict it
    assert packed["labels"][0, one - 1] != IGNORE_INDEX and packed["labels"][0, one] == IGNORE_INDEX


def test_generation_has_no_labels_in_either_mode(tokenizer):
    encoded = [collator(tokenizer, loss_tokens=mode, for_generation=True).encode(TURNS, VIDEO_TOKENS)
               for mode in ("answer", "llava")]
    assert encoded[0] == encoded[1]
    assert set(encoded[0][1]) == {IGNORE_INDEX}
    assert tokenizer.decode(encoded[0][0]).endswith("is there music?<|im_end|>\n<|im_start|>assistant\n")


def test_an_unknown_mode_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="loss_tokens 'all': expected one of answer, llava"):
        collator(tokenizer, loss_tokens="all")


def test_the_official_prompt_whatever_template_the_base_tokenizer_carries(tokenizer):
    """A base saved through LLaVA-OneVision's processor leaves the processor's chat template (for structured
    content: lists of {"type", "text"}) with its tokenizer; our text turns would render empty there."""
    structured = build_tiny_tokenizer()
    structured.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}{% endfor %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompt = collator(structured, for_generation=True).prompt(TURNS[:2])
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\n<video>\nwhat is the dog doing?<|im_end|>\n<|im_start|>assistant\n")
