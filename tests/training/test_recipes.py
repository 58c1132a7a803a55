"""recipes/<task>.yaml: each loads as a run config, is accepted with the flags it leaves to the user, and holds the
official settings of the table in docs/REPRODUCING.md."""
from pathlib import Path

import pytest

from training.config import load, parse

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["recipe", "side", "patch layers", "batch per GPU", "grad accum", "epochs", "lr", "warmup", "grad clip",
           "LoRA r / alpha / dropout", "loss tokens", "neighbourhood"]


def documented() -> dict[str, dict[str, str]]:
    """The rows of the recipe table in docs/REPRODUCING.md, by recipe name."""
    lines = (REPO / "docs" / "REPRODUCING.md").read_text().splitlines()
    header = lines.index("| " + " | ".join(COLUMNS) + " |")
    rows = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(COLUMNS, cells))
    return rows


def test_the_documented_recipes_are_the_recipe_files():
    assert sorted(documented()) == sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert sorted(documented()) == ["avsd", "llava-video", "music-avqa", "scanqa", "sqa3d"]


@pytest.mark.parametrize("name", sorted(documented()))
def test_each_recipe_holds_the_documented_official_settings(name, tmp_path):
    row, recipe = documented()[name], REPO / "recipes" / f"{name}.yaml"
    cfg = load(recipe)
    lora = cfg.model.lora
    assert {
        "side": ",".join(cfg.sides), "patch layers": cfg.model.patches.layers, "batch per GPU": cfg.data.batch_size,
        "grad accum": cfg.optim.grad_accum, "epochs": cfg.optim.epochs, "lr": cfg.optim.lr,
        "warmup": cfg.optim.warmup_ratio, "grad clip": cfg.optim.grad_clip,
        "LoRA r / alpha / dropout": [lora.r, lora.alpha, lora.dropout],
        "loss tokens": cfg.data.loss_tokens, "neighbourhood": cfg.model.patches.neighbourhood,
    } == {
        "side": row["side"], "loss tokens": row["loss tokens"], "neighbourhood": row["neighbourhood"],
        **{column: float(row[column]) for column in COLUMNS[2:9]},
        "LoRA r / alpha / dropout": [float(v) for v in row["LoRA r / alpha / dropout"].split(" / ")],
    }
    # the settings every official run shares
    assert (cfg.optim.weight_decay, cfg.model.newline, cfg.model.patches.d_model, cfg.model.patches.tie_v_to_k,
            lora.enabled) == (0.0, "grid", 512, True, True)
    # what the recipe leaves to the command line, given there, makes a valid run config; flags override the file
    run = parse(["--config", str(recipe), "--store", str(tmp_path / "store"), "--annotations",
                 str(tmp_path / "train.json"), "--out", str(tmp_path / "run"), "--base-model", str(tmp_path / "base"),
                 "--scale.workers", "8", "--optim.lr", "1e-5"])
    assert (run.scale.workers, run.optim.lr, run.optim.epochs) == (8, 1e-5, cfg.optim.epochs)
