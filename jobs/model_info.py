"""`pave model-info`: parameter counts of a PAVE patch and of the default LoRA against the base model. Models are
built on the meta device, so the 7B count needs no weights and no memory."""


def add_arguments(parser):
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--preset", choices=["0.5b", "7b"], default="7b", help="reference LLaVA-OneVision-Qwen2 size")
    base.add_argument("--base-model", metavar="DIR", help="a local LLaVA-OneVision dir (only config.json is read)")
    parser.add_argument("--side-dim", type=int, default=1024, help="width of the side-channel tokens")
    parser.add_argument("--patch-layers", type=int, default=2, help="patch decoder layers (3 for Music-AVQA)")
    parser.add_argument("--lora-r", type=int, default=64, help="LoRA rank (default 64)")


def run(args) -> int:
    from dataclasses import replace

    import torch
    from peft import get_peft_model
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from jobs.ray_runtime import base_model_path
    from model.llava import lora_config, reference_config
    from model.patch import PRESETS, PatchConfig, PavePatch

    if args.base_model:
        config = LlavaOnevisionConfig.from_pretrained(base_model_path(args.base_model))
        patch_config = PatchConfig(query_dim=config.vision_config.hidden_size, llm_dim=config.text_config.hidden_size)
        name = args.base_model
    else:
        config, patch_config, name = reference_config(args.preset), PRESETS[args.preset], f"LLaVA-OneVision-Qwen2 {args.preset}"
    patch_config = replace(patch_config, side_dim=args.side_dim, num_layers=args.patch_layers)

    def count(module, trainable_only=False):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    with torch.device("meta"):
        base = LlavaOnevisionForConditionalGeneration(config)
        n_base = count(base)
        n_patch = count(PavePatch(patch_config))
        lora = get_peft_model(base, lora_config(r=args.lora_r))
        n_lora = count(lora, trainable_only=True)
    c = patch_config
    print(f"base   {name}: {n_base:,} params (vision {config.vision_config.hidden_size}, LLM {config.text_config.hidden_size})")
    print(f"patch  side {c.side_dim} -> {c.d_model} x {c.num_layers} layers ({c.num_heads} heads) -> {c.llm_dim}: "
          f"{n_patch:,} params = {100 * n_patch / n_base:.3f}% of base")
    print(f"lora   r={args.lora_r} on every LLM *_proj: {n_lora:,} params = {100 * n_lora / n_base:.3f}% of base")
    print(f"train  patch + lora: {n_patch + n_lora:,} params = {100 * (n_patch + n_lora) / n_base:.3f}% of base")
    return 0
