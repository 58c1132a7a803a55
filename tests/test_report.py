"""`pave report`: the page compares what the runs and evaluations on disk say, and a real browser renders it."""
import json
import shutil
import subprocess

import numpy as np
import pytest

from jobs.cli import main as pave
from training.config import RunConfig, save
from training.tracking import METRICS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def training_run(directory, name: str, lr: float, losses: list[float], tokens_per_s: float, wait: float):
    directory.mkdir()
    cfg = RunConfig(out=str(directory), name=name)
    cfg.optim.lr, cfg.optim.steps = lr, 10 * len(losses)
    save(cfg, directory)
    history = [{"step": 10 * (k + 1), "epoch": 0, "loss": loss, "grad_norm": 1.0, "lr": lr, "samples_per_s": 2.0,
                "tokens_per_s": tokens_per_s, "step_time_s": 0.5, "data_wait_frac": wait, "resumes": 0}
               for k, loss in enumerate(losses)]
    (directory / METRICS).write_text("".join(json.dumps(m) + "\n" for m in history))
    return directory


def evaluation(directory, name: str, predictions: dict[str, str], exact_match: float):
    directory.mkdir()
    rows = [{"id": i, "answer": "high", "prediction": p} for i, p in predictions.items()]
    report = {"name": name, "checkpoint": "", "metrics": {"n": len(rows), "exact_match": exact_match},
              "predictions": rows}
    (directory / "report.json").write_text(json.dumps(report))
    return directory


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = [training_run(root / "a", "lora", 1e-3, [2.0, 1.0], 1000.0, 0.01),
            training_run(root / "b", "patch", 2e-3, [2.0, 0.5, 0.25], 3000.0, 0.5),
            evaluation(root / "e1", "LoRA only", {"q1": "low", "q2": "high"}, 0.5),
            evaluation(root / "e2", "patch + LoRA", {"q1": "high", "q2": "high"}, 1.0)]
    assert pave(["report", *map(str, runs), "--out", str(root / "page")]) == 0
    return root / "page"


def cells(html: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    row = html.split(f"<tr><td>{first}</td>", 1)[1].split("</tr>", 1)[0]
    return [first] + [c.split("</td>")[0] for c in row.split("<td>")[1:]]


def test_the_page_compares_the_runs_and_the_evaluations_side_by_side(page):
    html = (page / "index.html").read_text()
    # runs: steps done of planned, first and last loss, mean tokens/s, data wait; no GPU: no MFU, no memory
    assert cells(html, "lora") == ["lora", "20/20", "2.0000", "1.0000", "1,000", "2.00", "1.0%", "-", "-", "0"]
    assert cells(html, "patch") == ["patch", "30/30", "2.0000", "0.2500", "3,000", "2.00", "50.0%", "-", "-", "0"]
    # the configs differ in the learning rate and the planned steps (and the name), nothing else
    assert cells(html, "optim.lr") == ["optim.lr", "0.001", "0.002"]
    assert cells(html, "optim.steps") == ["optim.steps", "20", "30"]
    assert html.count("<tr><td>optim.") == 2 and "<tr><td>model." not in html
    # evaluations: metrics and predictions side by side
    assert cells(html, "exact_match") == ["exact_match", "0.500", "1.000"]
    assert cells(html, "q1") == ["q1", "high", "low", "high"]
    for image in ("loss.png", "throughput.png", "time.png"):
        assert (page / image).stat().st_size > 5000 and f'src="{image}"' in html


@pytest.mark.parametrize("bad, message", [
    ("missing", "no such directory"),
    ("empty", "neither a training run"),
])
def test_a_directory_that_is_no_run_is_one_line(tmp_path, capsys, bad, message):
    (tmp_path / "empty").mkdir()
    assert pave(["report", str(tmp_path / bad), "--out", str(tmp_path / "page")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(tmp_path / bad) in err


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium here (Debian package chromium; .ci/run installs it)")
def test_a_headless_browser_renders_the_page_with_its_plots(page, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,2000", (page / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = imread(shot)[..., :3]
    # matplotlib's first two line colours (C0 blue, C1 orange) only appear if the browser loaded the plots
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        close = np.abs(pixels * 255 - np.array(colour)).max(axis=-1) < 8
        assert close.sum() > 200, colour
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (page / "index.html").as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert "<td>patch + LoRA</td>" not in dom and "<th>patch + LoRA</th>" in dom  # parsed as the table header
