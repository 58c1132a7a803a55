"""Provenance: a run records what it was trained on (each modality's store version and encoder, the video token
layout, the base model's config and weights) in its checkpoints and its final/ directory; `pave eval` refuses other
features or another base model before generating (unless --allow-mismatch), and a resumed run refuses them before
Ray Train starts. Checkpoints written before provenance was recorded still load, with a warning.

One tiny run (1 worker, 2 steps) on store A serves every test; store B holds the same items with video tokens of
another encoder (another fingerprint) and the same audio version; store C holds both video versions."""
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore, TokenSchema, fingerprint
from jobs.cli import main as pave
from model.tiny import save_tiny_base
from pipelines.annotations import load_annotations
from pipelines.training_data import open_versions
from training.checkpoint import CHECKSUMS, TRAINABLE, TRAINER_STATE, sha256
from training.config import RUN_CONFIG, load, parse
from training.launch import check_resume_provenance, fit
from training.provenance import PROVENANCE, ProvenanceError, record
from training.recipe import Recipe

pytestmark = pytest.mark.timeout(300)
N_VIDEOS, FRAMES, TOKENS_PER_FRAME, VIDEO_DIM, AUDIO_DIM = 8, 4, 4, 32, 16


def write_store(root: Path, *video_encoders: str) -> str:
    """A video version per encoder (tokens seeded by its name) and audio (always the same version) for N_VIDEOS
    items; the annotations are written next to the store."""
    store = FeatureStore(str(root / "store"))
    t = np.arange(FRAMES, dtype=np.float64)
    for encoder in video_encoders:
        video = store.create_version(
            TokenSchema("video", TOKENS_PER_FRAME, VIDEO_DIM, "float16", attrs={"time_kind": "point"}),
            fingerprint(encoder, f"{encoder}-weights", {}, "float16", "1"))
        rng = np.random.default_rng(list(encoder.encode()))
        with video.writer() as writer:
            for i in range(N_VIDEOS):
                writer.add(f"v{i:03d}", rng.normal(size=(FRAMES, TOKENS_PER_FRAME, VIDEO_DIM)).astype(np.float16), t, t)
    audio = store.create_version(TokenSchema("audio", 1, AUDIO_DIM, "float32", attrs={"time_kind": "span"}),
                                 fingerprint("test-audio", "none", {}, "float32", "1"))
    rng = np.random.default_rng(0)
    with audio.writer() as writer:
        for i in range(N_VIDEOS):
            writer.add(f"v{i:03d}", rng.normal(size=(FRAMES, 1, AUDIO_DIM)).astype(np.float32), t, t + 2.0)
    question = {"from": "human", "value": "<video>\nIs the sound low or high?"}
    annotations = [{"id": f"v{i:03d}-q0", "video": f"v{i:03d}",
                    "conversations": [question, {"from": "gpt", "value": ("low", "high")[i % 2]}]}
                   for i in range(N_VIDEOS)]
    (root / "annotations.json").write_text(json.dumps(annotations))
    return store.url


def flags(store: str, annotations: Path, out: Path) -> list[str]:
    return ["--store", store, "--annotations", str(annotations), "--out", str(out), "--tiny-base", "--workers", "1",
            "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2", "--report-every", "1", "--patch-d-model",
            "32", "--lora-r", "8", "--name", "provenance"]


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    store_a = write_store(root / "a", "test-video-small")
    store_b = write_store(root / "b", "test-video-large")
    store_c = write_store(root / "c", "test-video-small", "test-video-large")
    annotations, out = root / "a" / "annotations.json", root / "run"
    final = fit(parse(flags(store_a, annotations, out)))
    return {"a": store_a, "b": store_b, "c": store_c, "annotations": annotations, "out": out, "final": final}


def fingerprints(store: str) -> dict[str, str]:
    return {m: FeatureStore(store).version(m).fingerprint.id for m in ("video", "audio")}


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "ray" / "provenance").glob("checkpoint_*") if p.is_dir())


def evaluate(run: dict, report: Path, *extra: str) -> int:
    return pave(["eval", "--annotations", str(run["annotations"]), "--checkpoint", str(run["final"]), "--out",
                 str(report), "--batch-size", "4", "--max-new-tokens", "2", *extra])


def test_the_export_and_every_checkpoint_record_what_the_run_was_trained_on(run):
    recorded = json.loads((run["final"] / PROVENANCE).read_text())
    store = FeatureStore(run["a"])
    assert recorded["features"] == {m: {"fingerprint": store.version(m).fingerprint.id, "encoder": encoder}
                                    for m, encoder in (("video", "test-video-small"), ("audio", "test-audio"))}
    # 4 tokens per frame: the full 2x2 patch grid of the tiny base's vision tower; the default newline layout
    assert recorded["layout"] == {"video_tokens_per_step": 4, "video_tokens": "full", "newline": "grid"}
    assert recorded["patches"] == {"neighbourhood": "time", "tie_v_to_k": False}  # a new run's defaults
    base = run["out"] / "base_model"
    assert recorded["base"]["path"] == str(base)
    assert recorded["base"]["config_sha256"] == hashlib.sha256((base / "config.json").read_bytes()).hexdigest()
    assert len(recorded["base"]["weights_digest"]) == 64
    assert checkpoints(run["out"])
    for directory in checkpoints(run["out"]):  # the same block, under the checkpoint's checksums
        assert json.loads((directory / PROVENANCE).read_text()) == recorded
        assert json.loads((directory / CHECKSUMS).read_text())[PROVENANCE] == sha256(directory / PROVENANCE)


def test_eval_on_another_video_version_is_refused_naming_both_unless_allowed(run, tmp_path, capsys, caplog):
    a, b = fingerprints(run["a"]), fingerprints(run["b"])
    assert a["video"] != b["video"] and a["audio"] == b["audio"]
    assert evaluate(run, tmp_path / "refused", "--store", run["b"]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "Traceback" not in message
    assert (f"pave eval: checkpoint {run['final']} was trained on video features {a['video']} (encoder "
            f"test-video-small), --store {run['b']} has {b['video']} (encoder test-video-large); pass "
            "--allow-mismatch to evaluate across versions deliberately") in message
    assert not (tmp_path / "refused").exists()  # refused before any generation
    # a store holding both versions, the other one picked explicitly
    assert evaluate(run, tmp_path / "picked", "--store", run["c"], "--fingerprint", f"video={b['video']}") == 2
    assert f"video features {a['video']} (encoder test-video-small), --store {run['c']} has {b['video']}" \
        in capsys.readouterr().err
    assert not (tmp_path / "picked").exists()

    with caplog.at_level(logging.WARNING, logger="training.evaluation"):
        assert evaluate(run, tmp_path / "allowed", "--store", run["b"], "--allow-mismatch") == 0
    # (besides the count of answers cut at 2 new tokens: the 2-step model rarely ends one, and that it is evaluated
    # on its training questions)
    warnings = [r.getMessage() for r in caplog.records if r.name == "training.evaluation"
                and "hit the limit" not in r.getMessage() and "was trained on, of the same video" not in r.getMessage()]
    assert len(warnings) == 1 and b["video"] in warnings[0] and warnings[0].endswith("evaluating anyway "
                                                                                       "(--allow-mismatch)")
    assert json.loads((tmp_path / "allowed" / "report.json").read_text())["metrics"]["n"] == N_VIDEOS


def test_eval_with_another_base_model_is_refused_naming_it(run, tmp_path, capsys):
    """A base of the same config (same words, same dims) but other random weights: only the weights digest tells."""
    texts = [text for s in load_annotations(run["annotations"]) for _, text in s.turns]
    trained = run["out"] / "base_model"
    other = save_tiny_base(tmp_path / "other_base", texts, seed=1, video_dim=VIDEO_DIM, grid=2)
    assert (other / "config.json").read_bytes() == (trained / "config.json").read_bytes()
    assert evaluate(run, tmp_path / "refused", "--base-model", str(other)) == 2
    message = capsys.readouterr().err
    config = hashlib.sha256((other / "config.json").read_bytes()).hexdigest()[:12]
    assert f"was trained on base model {trained} (config.json sha256 {config}, weights digest " in message
    assert f"--base-model {other} has config.json sha256 {config}, weights digest " in message
    assert "features" not in message and not (tmp_path / "refused").exists()


def test_a_resumed_run_on_other_features_is_refused_before_training(run):
    saved = (run["out"] / RUN_CONFIG).read_text()
    before = checkpoints(run["out"])
    with pytest.raises(ProvenanceError) as refused:
        fit(parse(flags(run["b"], run["annotations"], run["out"]) + ["--steps", "4"]))
    a, b = fingerprints(run["a"]), fingerprints(run["b"])
    assert f"run 'provenance' has checkpoints ({before[-1].name}) trained on video features {a['video']} " \
           f"(encoder test-video-small), --store {run['b']} has {b['video']} (encoder test-video-large); resume " \
           "with the same store versions and base model" in str(refused.value)
    assert (run["out"] / RUN_CONFIG).read_text() == saved and checkpoints(run["out"]) == before


def test_a_checkpoint_without_provenance_still_loads_with_a_warning(run, tmp_path, caplog):
    """As written before provenance was recorded: no provenance.json, no checksum of it."""
    out = tmp_path / "old_run"
    legacy = out / "ray" / "provenance" / checkpoints(run["out"])[-1].name
    shutil.copytree(checkpoints(run["out"])[-1], legacy)
    (legacy / PROVENANCE).unlink()
    (legacy / CHECKSUMS).write_text(json.dumps({name: sha256(legacy / name) for name in (TRAINABLE, TRAINER_STATE)}))
    cfg = load(run["out"] / RUN_CONFIG)
    versions = open_versions(cfg.data.store, cfg.modalities, cfg.data.fingerprints)
    with caplog.at_level(logging.WARNING):
        check_resume_provenance(cfg, out, record(cfg.model.base, versions, cfg.model))
    assert f"run 'provenance' has checkpoints written before provenance was recorded ({legacy.name})" in caplog.text
    recipe = Recipe(cfg, load_annotations(cfg.data.annotations), versions, torch.device("cpu")).setup()
    recipe.load(legacy)
    assert recipe.state.step == 2

    final = tmp_path / "old_final"
    shutil.copytree(run["final"], final)
    (final / PROVENANCE).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.evaluation"):
        assert pave(["eval", "--annotations", str(run["annotations"]), "--checkpoint", str(final), "--out",
                     str(tmp_path / "report"), "--batch-size", "4", "--max-new-tokens", "2"]) == 0
    assert f"checkpoint {final} records no provenance" in caplog.text
