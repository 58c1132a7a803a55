"""`pave model-info`: patch params and % of base, for the 7B preset (meta device) and for a local base dir."""
import re
import subprocess
import sys

from transformers import LlavaOnevisionForConditionalGeneration


def model_info(*args) -> str:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "model-info", *args],
                          capture_output=True, text=True, check=True).stdout


def numbers(line: str) -> tuple[int, float]:
    count, percent = re.search(r": ([\d,]+) params = ([\d.]+)% of base", line).groups()
    return int(count.replace(",", "")), float(percent)


def test_7b_preset_reports_the_9m_patch_and_its_share_of_the_8b_base():
    out = model_info("--preset", "7b")
    lines = {line.split()[0]: line for line in out.splitlines()}
    n_base = int(re.search(r": ([\d,]+) params", lines["base"]).group(1).replace(",", ""))
    n_patch, percent = numbers(lines["patch"])
    assert 7.9e9 < n_base < 8.1e9  # LLaVA-OneVision-Qwen2-7B: 8.03B
    assert abs(n_patch - 9.0e6) / 9.0e6 < 0.02
    assert abs(percent - 100 * n_patch / n_base) < 1e-3
    n_lora, _ = numbers(lines["lora"])
    assert n_lora == 64 * 28 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))  # q,o + k,v + mlp


def test_base_model_dir_counts_match_the_loaded_model(tiny_dir):
    out = model_info("--base-model", str(tiny_dir), "--side-dim", "16", "--patch-layers", "1")
    n_base = int(re.search(r"base .*: ([\d,]+) params", out).group(1).replace(",", ""))
    assert n_base == sum(p.numel() for p in LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir).parameters())
    assert "side 16 -> 512 x 1 layers" in out and "% of base" in out
