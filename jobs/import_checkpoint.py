"""`pave import-checkpoint SRC --out DIR --base-model BASE --sides audio`: an official PAVE release (dragonlzm/PAVE:
non_lora_trainables.bin + peft adapter) as a checkpoint `pave eval --checkpoint DIR` loads (model/official.py), with
a run config recording the base model, the side channel, the grid newline layout and the patch's shapes and
official semantics (index-chunk neighbourhoods, V from the K projection), and the LoRA's."""
import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the official release directory")
    parser.add_argument("--out", required=True, help="where our checkpoint goes (a new directory)")
    parser.add_argument("--base-model", required=True, help="local LLaVA-OneVision directory it was trained on")
    parser.add_argument("--sides", dest="side", required=True, metavar="SIDE",
                        help="the side channel the patch reads (audio, 3d, hfr, ...): one, as a release has one patch")
    parser.add_argument("--store", default="", help="feature store eval reads by default (else pass --store to eval)")
    parser.add_argument("--num-heads", type=int, default=4, help="patch attention heads (4 in every shipped config)")


def run(args) -> int:
    import json
    from pathlib import Path

    from jobs.ray_runtime import base_model_path, output_path
    from model.official import import_official
    from model.patch import PatchConfig
    from training.config import RunConfig, save

    out = Path(output_path(args.out, "--out"))
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"pave import-checkpoint: --out {out} is not empty; give a new directory")
    final = import_official(args.source, out, base_model_path(args.base_model), args.side, args.num_heads)

    patch = PatchConfig(**json.loads((final / "patches" / args.side / "config.json").read_text()))
    run_config = RunConfig(out=str(final))
    run_config.data.store = args.store
    run_config.model.base = str(Path(args.base_model).resolve())
    run_config.model.newline = "grid"
    run_config.model.patches.sides = [args.side]
    run_config.model.patches.d_model, run_config.model.patches.layers = patch.d_model, patch.num_layers
    run_config.model.patches.neighbourhood, run_config.model.patches.tie_v_to_k = patch.neighbourhood, patch.tie_v_to_k
    lora = final / "lora" / "adapter_config.json"
    if lora.exists():
        adapter = json.loads(lora.read_text())
        run_config.model.lora.r, run_config.model.lora.alpha = adapter["r"], adapter["lora_alpha"]
        run_config.model.lora.dropout = adapter.get("lora_dropout", 0.0)
    else:
        run_config.model.lora.enabled = False
    save(run_config, final)
    print(f"imported {args.source} -> {final} ({args.side} patch: {patch.num_layers} layers, d_model "
          f"{patch.d_model}; LoRA {'r=' + str(run_config.model.lora.r) if lora.exists() else 'none'})")
    return 0
