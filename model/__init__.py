"""The network: PAVE patches on a frozen LLaVA-OneVision, with peft LoRA.

model.patch  PatchConfig, PRESETS, VideoBatch, SideBatch, PavePatch    (torch only)
model.llava  PaveLlava, lora_config, reference_config, video placeholder helpers    (transformers + peft)
model.tiny   build_tiny_llava_onevision: an offline tiny model + tokenizer for tests and demos
Modules are imported directly (no re-exports here) so that `import model.patch` stays light.
"""
