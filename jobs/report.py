"""`pave report RUN... [--out DIR]`: one static HTML page (no server) with PNGs that compares training runs and
evaluations: loss curves on one axis, throughput and where the step time goes (compute vs data wait), a summary per
run, the evaluations' metrics and predictions side by side, and the settings in which the runs' configs differ.

Each RUN is a `pave train --out` directory (metrics.jsonl, run_config.yaml; a run still going is read as far as it
got) or a `pave eval --out` directory (report.json), a path or an object-store URL: the files read are downloaded
into a temp dir, and the page is written through the same run-directory abstraction (training/rundir.py)."""
import contextlib
import html
import json
import statistics
from pathlib import Path

from training.config import add_storage_arguments, storage_config

PAGE = "index.html"
FIGURES = ("loss.png", "throughput.png", "time.png")
PREDICTION_ROWS = 50  # per page; the eval's own report.md has them all


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="`pave train --out` or `pave eval --out` directories (paths or URLs)")
    parser.add_argument("--out", default="report", help="where the page goes, a path or URL (default ./report)")
    add_storage_arguments(parser)


def run(args) -> int:
    from tqdm import tqdm

    from training.rundir import RunDir

    storage = storage_config(args)
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(RunDir(url, storage.options(url))) for url in args.runs]
        kinds = [kind(run) for run in runs]  # every argument checked before any is read
        out = stack.enter_context(RunDir(args.out, storage.options(args.out)))
        out.path.mkdir(parents=True, exist_ok=True)
        trainings, evals = {}, {}
        for run, what in tqdm(list(zip(runs, kinds)), desc="reading runs", unit="run"):
            group = trainings if what == "train" else evals
            label, content = read(run, what)
            group[unique(label, group)] = content
        sections = []
        if trainings:
            sections += [figures(trainings, out.path), run_summary(trainings), config_differences(trainings)]
        if evals:
            sections += [eval_metrics(evals), eval_predictions(evals)]
        title = html.escape(", ".join([*trainings, *evals]))
        (out.path / PAGE).write_text(TEMPLATE.format(title=title, body="\n".join(sections)))
        out.push(PAGE, *FIGURES)
    print(f"report of {len(trainings)} training run(s) and {len(evals)} evaluation(s): {out.location(PAGE)}")
    return 0


def kind(run) -> str:
    """'train' or 'eval'; a RUN argument that is neither is refused."""
    from training.config import RUN_CONFIG
    from training.evaluation import REPORT
    from training.tracking import METRICS

    if not run.exists(""):
        raise SystemExit(f"pave report: {run}: no such directory; give `pave train --out` or `pave eval --out` "
                         "directories")
    if run.exists(REPORT):
        return "eval"
    if run.exists(RUN_CONFIG):
        if not run.exists(METRICS):
            raise SystemExit(f"pave report: {run}: this run has reported no metrics yet; wait for its first "
                             "report (--report-every steps) or leave it out")
        return "train"
    raise SystemExit(f"pave report: {run}: neither a training run ({RUN_CONFIG}, {METRICS}) nor an evaluation "
                     "(report.json); give `pave train --out` or `pave eval --out` directories")


def read(run, what: str) -> tuple[str, dict]:
    """(label, content) of a RUN argument of kind `what`."""
    from training.config import RUN_CONFIG, load, to_dict
    from training.evaluation import REPORT
    from training.tracking import METRICS

    name = run.url.rsplit("/", 1)[-1]
    if what == "eval":
        report = json.loads(run.pull(REPORT).read_text())
        return report.get("name") or name, report
    history = [json.loads(line) for line in run.pull(METRICS).read_text().splitlines()]
    cfg = load(run.pull(RUN_CONFIG), location=run.url)
    return cfg.name if cfg.name != "pave" else name, {"history": history, "config": to_dict(cfg)}


def unique(label: str, taken: dict) -> str:
    candidate, n = label, 2
    while candidate in taken:
        candidate, n = f"{label} ({n})", n + 1
    return candidate


def figures(trainings: dict, out: Path) -> str:
    """loss.png (every run on one axis), throughput.png (tokens/s over steps) and time.png (mean step time split
    into compute and data wait)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> str:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        return f'<img src="{name}" alt="{name}">'

    images = []
    for name, key, ylabel in ((FIGURES[0], "loss", "training loss"), (FIGURES[1], "tokens_per_s", "tokens/s")):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for label, run in trainings.items():
            ax.plot([m["step"] for m in run["history"]], [m[key] for m in run["history"]], marker="o", ms=3,
                    label=label)
        ax.set(xlabel="step", ylabel=ylabel, title=ylabel)
        ax.legend()
        images.append(save(fig, name))
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.5 * len(trainings)))
    labels = list(trainings)
    step_ms = [1000 * mean(run["history"], "step_time_s") for run in trainings.values()]
    wait_ms = [ms * mean(run["history"], "data_wait_frac") for ms, run in zip(step_ms, trainings.values())]
    ax.barh(labels, [s - w for s, w in zip(step_ms, wait_ms)], label="compute")
    ax.barh(labels, wait_ms, left=[s - w for s, w in zip(step_ms, wait_ms)], label="data wait")
    ax.set(xlabel="mean step time (ms)", title="where the step time goes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    images.append(save(fig, FIGURES[2]))
    return "<h2>Training</h2>\n<div class=figs>" + "".join(images) + "</div>"


def mean(history: list[dict], key: str) -> float:
    """Over the reports that have `key` (a run resumed on another machine may have MFU or GPU memory in some)."""
    return statistics.mean(m[key] for m in history if key in m)


def run_summary(trainings: dict) -> str:
    columns = ["run", "steps", "first loss", "last loss", "tokens/s", "samples/s", "data wait", "MFU",
               "peak GPU GiB", "resumes"]
    rows = []
    for label, run in trainings.items():
        h = run["history"]
        mfu = f"{100 * mean(h, 'mfu'):.1f}%" if "mfu" in h[-1] else "-"
        peak = f"{max(m['gpu_mem_peak_gib'] for m in h if 'gpu_mem_peak_gib' in m):.1f}" \
            if "gpu_mem_peak_gib" in h[-1] else "-"
        rows.append([label, f"{h[-1]['step']}/{run['config']['optim']['steps']}", f"{h[0]['loss']:.4f}",
                     f"{h[-1]['loss']:.4f}", f"{mean(h, 'tokens_per_s'):,.0f}", f"{mean(h, 'samples_per_s'):.2f}",
                     f"{100 * mean(h, 'data_wait_frac'):.1f}%", mfu, peak, str(h[-1]["resumes"])])
    return "<h3>Runs (means over their metric reports)</h3>\n" + table(columns, rows)


def config_differences(trainings: dict) -> str:
    from training.tracking import flat

    if len(trainings) < 2:
        return ""
    flats = {label: flat(run["config"]) for label, run in trainings.items()}
    keys = sorted({k for f in flats.values() for k in f} - {"out"})
    differing = [k for k in keys if len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
    rows = [[k, *(json.dumps(f.get(k)) for f in flats.values())] for k in differing]
    return ("<h3>Run configs: the settings that differ</h3>\n" +
            (table(["setting", *flats], rows) if rows else "<p>none (apart from the output directory)</p>"))


def eval_metrics(evals: dict) -> str:
    keys = list(dict.fromkeys(k for report in evals.values() for k in report["metrics"]))
    rows = [[k, *(number(report["metrics"].get(k)) for report in evals.values())] for k in keys]
    return "<h2>Evaluation</h2>\n" + table(["metric", *evals], rows)


def number(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def eval_predictions(evals: dict) -> str:
    """Predictions side by side, per question id (the first PREDICTION_ROWS ids)."""
    by_id = {}
    for label, report in evals.items():
        for p in report["predictions"]:
            by_id.setdefault(p["id"], {"answer": p["answer"]})[label] = p["prediction"]
    ids = sorted(by_id)[:PREDICTION_ROWS]
    rows = [[i, by_id[i]["answer"], *(by_id[i].get(label, "-") for label in evals)] for i in ids]
    shown = f"the first {len(ids)} of {len(by_id)}" if len(by_id) > len(ids) else f"all {len(ids)}"
    return f"<h3>Predictions ({shown} questions)</h3>\n" + table(["id", "answer", *evals], rows)


def table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PAVE report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
thead {{ background: #f0f0f0; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.figs img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head>
<body><h1>PAVE report</h1>
{body}
</body></html>
"""
