"""`pave eval`'s answer length, --limit and generation order, on the synthetic store (tests/training/conftest.py)
with a tiny random base model: Ray Data actors on the session's local Ray, the real model, nothing mocked."""
import json
import logging

import pytest
import yaml

from model.tiny import save_tiny_base
from pipelines.annotations import Sample, load_annotations
from training.config import ConfigError
from training.evaluation import EvalRequest, answer_budget, generation_order

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def base(synthetic_store, tmp_path_factory):
    """A tiny random base whose tokenizer knows the store's words; its projector reads the store's video tokens."""
    _, annotations = synthetic_store
    texts = [text for s in load_annotations(annotations) for _, text in s.turns]
    return save_tiny_base(tmp_path_factory.mktemp("base"), texts, video_dim=32, grid=2)


def test_limit_below_1_is_refused_in_one_line_before_any_work(pave, tmp_path):
    code, _, err = pave("eval", "--annotations", tmp_path / "missing.json", "--out", tmp_path / "eval", "--limit", 0)
    assert code == 2
    assert err == ("pave eval: --limit 0: give the number of samples to evaluate (the first of --annotations), at "
                   "least 1; or leave --limit out to evaluate them all\n")
    assert not (tmp_path / "eval").exists()
    code, _, err = pave("eval", "--annotations", tmp_path / "a.json", "--out", tmp_path / "eval", "--limit", 2,
                        "--task", "music-avqa", "--task-annotations", tmp_path / "raw.json")
    assert code == 2 and err == ("pave eval: --limit 2 evaluates part of the questions, and --task music-avqa's "
                                 "official scores need every one: drop --limit, or --task to generate without the "
                                 "official scores\n")


def test_limit_evaluates_the_first_samples_and_answers_cut_at_the_limit_are_counted(
        synthetic_store, base, ray_local, pave, tmp_path, caplog):
    """The random base never ends an answer: every one of the first 6 samples hits the limit, which without a run
    config is the longest answer of the annotations plus a margin; both are said in one line each and recorded."""
    store, annotations = synthetic_store
    samples = load_annotations(annotations)
    with caplog.at_level(logging.WARNING, logger="training.evaluation"):
        code, out, _ = pave("eval", "--annotations", annotations, "--store", store, "--base-model", base,
                            "--out", tmp_path / "eval", "--limit", 6, "--batch-size", 4)
    assert code == 0, out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [r["id"] for r in report["predictions"]] == [s.id for s in samples[:6]]
    budget = answer_budget(str(base), samples[:6])
    assert report["max_new_tokens"] == budget and report["metrics"]["n"] == 6 and report["metrics"]["hit_limit"] == 6
    assert [r.getMessage() for r in caplog.records if r.name == "training.evaluation"] == [
        f"no answer length recorded in a run config: generating up to {budget} new tokens, the longest answer of "
        f"{annotations} plus a margin (--max-new-tokens sets it)",
        f"6 of 6 answers hit the limit of {budget} new tokens without their end (cut short); raise it with "
        "--max-new-tokens"]
    assert f"| 6 | 0.000 | {report['metrics']['cider']:.3f} | 6 |" in (tmp_path / "eval" / "report.md").read_text()
    assert f"cut at {budget} new tokens" in (tmp_path / "eval" / "report.md").read_text()
    # an explicit limit wins, and the predictions are that long
    code, out, _ = pave("eval", "--annotations", annotations, "--store", store, "--base-model", base,
                        "--out", tmp_path / "eval3", "--limit", 2, "--max-new-tokens", 3)
    report = json.loads((tmp_path / "eval3" / "report.json").read_text())
    assert code == 0 and report["max_new_tokens"] == 3 and report["metrics"]["hit_limit"] == 2


def test_answer_budget_is_the_longest_answer_in_tokens_plus_a_margin(base):
    from transformers import AutoTokenizer

    long = "a dog and a cat on the left before the loud beep " * 8
    samples = [Sample("s0", "v0", (("user", "q"), ("assistant", "yes"))),
               Sample("s1", "v1", (("user", "q"), ("assistant", long), ("user", "and?"), ("assistant", "no")))]
    tokens = len(AutoTokenizer.from_pretrained(base)(long, add_special_tokens=False)["input_ids"])
    assert tokens > 40  # so that the margin is the quarter, not the 8 tokens
    assert answer_budget(str(base), samples) == tokens + 1 + tokens // 4  # every answer turn counts, not only the last
    assert answer_budget(str(base), samples[:1]) == 1 + 1 + 8


def test_old_run_configs_keep_their_answer_length_and_new_ones_ask_for_auto(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "run_config.yaml").write_text(yaml.safe_dump({"data": {"store": "s"}, "model": {"base": "b"},
                                                         "eval": {"batch_size": 8, "max_new_tokens": 16}}))
    _, request = EvalRequest("a.json", str(old)).resolve()
    assert request.max_new_tokens == 16
    (old / "run_config.yaml").write_text(yaml.safe_dump({"data": {"store": "s"}, "model": {"base": "b"}}))
    _, request = EvalRequest("a.json", str(old)).resolve()
    assert request.max_new_tokens == 0  # auto: evaluate() measures the annotations' answers
    assert EvalRequest("a.json", str(old), max_new_tokens=5).resolve()[1].max_new_tokens == 5
    with pytest.raises(ConfigError, match="--max-new-tokens 0 \\(auto\\) or more"):
        EvalRequest("a.json", str(old), max_new_tokens=-1).resolve()


def test_generation_order_groups_a_videos_questions_and_sorts_by_length():
    """Videos by stored frames (the prompt's bulk), then by their longest question; a video's questions together,
    shortest first."""
    questions = [("q0", "a", "x" * 5), ("q1", "b", "x" * 50), ("q2", "a", "x" * 40), ("q3", "c", "x" * 10),
                 ("q4", "d", "x" * 20), ("q5", "b", "x" * 1), ("q6", "c", "x" * 30)]
    samples = [Sample(i, v, (("user", q), ("assistant", "yes"))) for i, v, q in questions]
    order = [s.id for s in generation_order(samples, {"a": 3, "b": 2, "c": 3, "d": 2})]
    # 2 frames: d (longest 20), b (50); 3 frames: c (30), a (40)
    assert order == ["q4", "q5", "q1", "q3", "q6", "q0", "q2"]
