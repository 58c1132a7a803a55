"""Encoders from local HF directories and untrained seeded ones, and what their fingerprints say (no Ray)."""
import json

import numpy as np
import pytest
import torch
from transformers import ASTConfig, ASTModel, SiglipVisionConfig, SiglipVisionModel

from model.tiny import build_tiny_llava_onevision
from pipelines.audio import AudioWindows
from pipelines.encoders import audio_encoder, point_encoder, vision_encoder, weights_digest
from pipelines.materialize import MODALITIES, Settings

FRAMES = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_a_llava_onevision_dir_gives_its_tower_pooled_like_llava(tmp_path):
    llava, _ = build_tiny_llava_onevision(tmp_path, seed=3)  # SigLIP 32 px, patch 8: a 4x4 grid
    encoder = vision_encoder(str(tmp_path), "half")
    assert encoder.name.startswith("LlavaOnevisionForConditionalGeneration.vision_tower")
    assert (encoder.layer, encoder.select) == (llava.config.vision_feature_layer, "full")
    assert (encoder.tokens_per_step, encoder.dim, encoder.inputs.size) == (4, 32, 32)
    assert weights_digest(encoder.tower) == weights_digest(llava.model.vision_tower)
    with torch.no_grad():
        tokens = encoder(FRAMES)
        pixels = (FRAMES.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
        hidden = llava.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        expected = llava.model.apply_pooling(hidden)  # LLaVA-OneVision's own 2x2 pooling, here before the projector
    torch.testing.assert_close(tokens, expected)


def test_a_vision_model_dir_uses_its_preprocessor_stats(tmp_path):
    config = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                                image_size=48, patch_size=8)
    torch.manual_seed(1)
    SiglipVisionModel(config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.5, 0.6],
                                                                    "image_std": [0.2, 0.3, 0.4]}))
    encoder = vision_encoder(str(tmp_path), "2x2", layer=-2)
    assert encoder.name == "SiglipVisionModel" and encoder.params()["mean"] == pytest.approx([0.4, 0.5, 0.6])
    assert (encoder.tokens_per_step, encoder.dim, encoder.inputs.size) == (4, 16, 48)
    frames = torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8)
    with torch.no_grad():
        pixels = (frames.permute(0, 3, 1, 2) / 255.0 - torch.tensor([0.4, 0.5, 0.6])[:, None, None]) / torch.tensor(
            [0.2, 0.3, 0.4])[:, None, None]
        hidden = encoder.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # 6x6 patches
        grid = hidden.reshape(2, 6, 6, 16)
        expected = grid.reshape(2, 2, 3, 2, 3, 16).mean((2, 4)).reshape(2, 4, 16)  # 3x3 blocks -> 2x2
        torch.testing.assert_close(encoder(frames), expected)


def test_audio_encoder_dirs_must_fit_the_windows(tmp_path):
    windows = AudioWindows()
    fits = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     num_mel_bins=128, max_length=204)
    ASTModel(fits).save_pretrained(tmp_path / "fits")
    encoder = audio_encoder(str(tmp_path / "fits"), windows)
    assert encoder.name == "ASTModel" and (encoder.tokens_per_step, encoder.dim) == (1, 16)
    assert encoder(torch.zeros(2, 204, 128)).shape == (2, 1, 16)
    ASTModel(ASTConfig(**{**fits.to_dict(), "max_length": 1024})).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="1024 frames"):
        audio_encoder(str(tmp_path / "other"), windows)
    with pytest.raises(ValueError, match="built in"):
        point_encoder(str(tmp_path / "fits"), grid=8)


@pytest.mark.parametrize("modality", ["video", "audio", "hfr", "3d"])
def test_untrained_encoders_are_deterministic_and_fingerprinted_as_such(modality):
    spec = MODALITIES[modality]
    a, b = spec.encoder(None, Settings()), spec.encoder(None, Settings())
    other = spec.encoder(None, Settings(seed=1))
    assert "untrained" in a.name and weights_digest(a) == weights_digest(b) != weights_digest(other)
    (schema, fp), (_, fp_b) = spec.schema_and_fingerprint(Settings(), a), spec.schema_and_fingerprint(Settings(), b)
    assert fp == fp_b and fp.spec["weights_digest"] == weights_digest(a)
    assert fp.id != spec.schema_and_fingerprint(Settings(seed=1), other)[1].id
    changed = Settings(frames=16, hfr_fps=4.0, grid_3d=4, audio=AudioWindows(hop_s=0.5))  # a preprocessing change
    assert fp.id != spec.schema_and_fingerprint(changed, spec.encoder(None, changed))[1].id
    assert schema.attrs["time_kind"] == ("span" if modality == "audio" else "frame")
    inputs = np.zeros((2, *a.inputs.shape), a.inputs.dtype)
    with torch.no_grad():
        assert a(torch.from_numpy(inputs)).shape == (2, a.tokens_per_step, a.dim)
