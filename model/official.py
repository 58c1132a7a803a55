"""Import a checkpoint released by the official PAVE code (dragonlzm/PAVE) into our `PaveLlava.save_pretrained` layout.

An official release directory holds (train_pave_w_feat.py):
- non_lora_trainables.bin: the patch (PAVEModuleV5, `temporal_aggregator`) as
  `base_model.model.model.temporal_aggregator.<param>` (torch.save);
- adapter_config.json + adapter_model.safetensors|.bin: peft LoRA on its Qwen2 LLM, keys
  `base_model.model.model.layers.N.<self_attn|mlp>.<x>_proj.lora_<A|B>.weight`;
- config.json of its LLaVA model (the patch's own config is not saved; its shapes are read off the weights).

Mapping: input_mapping -> side_in, query_input_mapping -> query_in, cross_attn_layers.i.attn.q_linear -> layers.i.attn.q,
k_linear -> layers.i.attn.k, cross_attn_layers.i.ffn -> layers.i.ffn, output_mapping.{0,2} -> out.{0,2},
output_norm -> out.4; the official forward computes V with its K projection, so the patch is tied (tie_v_to_k) and the
never-used v_linear is dropped. LoRA keys gain HF LLaVA-OneVision's `language_model.` prefix. The newline layout is
"grid" (every shipped official script trains with mm_newline_position=grid), and the patch's neighbourhoods follow
the official index-chunk rule (model/patch.py), the side tokens each frame saw in training.
"""
import json
import re
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from model.llava import lora_config
from model.patch import PatchConfig, PavePatch

PATCH_PREFIX = "base_model.model.model.temporal_aggregator."
OFFICIAL_LLM = "base_model.model.model.layers."
OURS_LLM = "base_model.model.model.language_model.layers."
RENAMES = [  # (official pattern, ours); applied in order to every patch key
    (r"^input_mapping\.", "side_in."),
    (r"^query_input_mapping\.", "query_in."),
    (r"^cross_attn_layers\.(\d+)\.attn\.q_linear\.", r"layers.\1.attn.q."),
    (r"^cross_attn_layers\.(\d+)\.attn\.k_linear\.", r"layers.\1.attn.k."),
    (r"^cross_attn_layers\.(\d+)\.ffn\.", r"layers.\1.ffn."),
    (r"^output_mapping\.(0|2)\.", r"out.\1."),
    (r"^output_norm\.", "out.4."),
]
UNUSED = re.compile(r"^cross_attn_layers\.\d+\.attn\.v_linear\.")


class OfficialCheckpointError(ValueError):
    """A directory that is not an official PAVE release this importer understands; the message says what is off."""


def patch_state(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our PavePatch state dict from the official module's (keys without the temporal_aggregator prefix)."""
    ours, unknown = {}, []
    for key, value in official.items():
        if UNUSED.match(key):
            continue
        for pattern, replacement in RENAMES:
            if re.match(pattern, key):
                ours[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise OfficialCheckpointError(f"patch weights this importer does not know: {unknown[:5]}")
    return ours


def patch_config(state: dict[str, torch.Tensor], num_heads: int) -> PatchConfig:
    """The patch's shapes, read off its weights (the official release does not save its module config)."""
    layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.")}
    return PatchConfig(side_dim=state["side_in.weight"].shape[1], query_dim=state["query_in.weight"].shape[1],
                       llm_dim=state["out.2.weight"].shape[0], d_model=state["side_in.weight"].shape[0],
                       num_heads=num_heads, num_layers=len(layers), ffn_dim=state["layers.0.ffn.1.weight"].shape[0],
                       out_hidden=state["out.0.weight"].shape[0], dropout=0.0, neighbourhood="official",
                       tie_v_to_k=True)


def read_lora(source: Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The official adapter as our LoRA config (every LLM projection) and weights under our key names."""
    config = json.loads((source / "adapter_config.json").read_text())
    if (source / "adapter_model.safetensors").exists():
        weights = load_file(source / "adapter_model.safetensors")
    else:
        weights = torch.load(source / "adapter_model.bin", map_location="cpu", weights_only=True)
    if bad := [k for k in weights if not k.startswith(OFFICIAL_LLM)]:
        raise OfficialCheckpointError(f"{source}: LoRA weights outside the LLM layers: {bad[:5]}")
    renamed = {OURS_LLM + k[len(OFFICIAL_LLM):]: v for k, v in weights.items()}
    return lora_config(config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)), renamed


def import_official(source: str | Path, destination: str | Path, base_model: str, side: str,
                    num_heads: int = 4) -> Path:
    """Write `destination` (patches/<side>/, lora/, pave.json) from the official release in `source`; returns it.
    `num_heads`: the patch's attention heads, which its weights do not tell (4 in every shipped config)."""
    source, destination = Path(source), Path(destination)
    trainables = source / "non_lora_trainables.bin"
    if not trainables.exists():
        raise OfficialCheckpointError(f"{source}: no non_lora_trainables.bin (is this an official PAVE release?)")
    saved = torch.load(trainables, map_location="cpu", weights_only=True)
    official = {k[len(PATCH_PREFIX):]: v for k, v in saved.items() if k.startswith(PATCH_PREFIX)}
    if not official:
        raise OfficialCheckpointError(f"{trainables}: no weights under {PATCH_PREFIX!r}")
    state = patch_state(official)
    patch = PavePatch(patch_config(state, num_heads))
    patch.load_state_dict(state)  # strict: every weight of our patch must come from the release
    patch.save_pretrained(destination / "patches" / side)

    if (source / "adapter_config.json").exists():
        config, weights = read_lora(source)
        config.base_model_name_or_path = str(base_model)
        (destination / "lora").mkdir(parents=True, exist_ok=True)
        config.save_pretrained(destination / "lora")
        save_file(weights, destination / "lora" / "adapter_model.safetensors")
    (destination / "pave.json").write_text(json.dumps({"patches": [side], "newline": "grid"}, indent=2))
    return destination
