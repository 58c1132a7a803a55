"""`pave eval`: generate answers with a trained PAVE model (or the bare base model) from stored features and score
them: exact match after normalisation, and CIDEr (pycocoevalcap) for free-text answers. Writes report.json and
report.md (metrics + every prediction) into --out."""
import argparse
import json
import re
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--checkpoint", default="", help="a `pave train` final/ dir; empty: the base model alone")
    parser.add_argument("--base-model", default="", help="default: the base model recorded in the checkpoint")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--fingerprint", action="append", default=[], metavar="MODALITY=FP")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--name", default="", help="label of this model in the report (default: checkpoint dir)")


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def score(predictions: list[str], answers: list[str]) -> dict:
    from pycocoevalcap.cider.cider import Cider

    exact = sum(normalise(p) == normalise(a) for p, a in zip(predictions, answers))
    ids = range(len(answers))
    cider, _ = Cider().compute_score({i: [normalise(answers[i])] for i in ids},
                                     {i: [normalise(predictions[i]) or "<empty>"] for i in ids})
    return {"n": len(answers), "exact_match": exact / len(answers), "cider": float(cider)}


def evaluate(store: str, annotations: str, checkpoint: str, base_model: str, batch_size: int = 8,
             max_new_tokens: int = 16, fingerprints: dict[str, str] | None = None) -> dict:
    import torch
    from transformers import AutoTokenizer

    from jobs.ray_runtime import init_ray
    from jobs.train import TRAIN_CONFIG
    from model.collate import Collator
    from model.llava import PaveLlava
    from pipelines.annotations import load_annotations
    from pipelines.training_data import check_samples, feature_dataset, modality_dtypes, open_versions

    trained = json.loads((Path(checkpoint) / TRAIN_CONFIG).read_text()) if checkpoint else {}
    base_model = base_model or trained.get("base_model", "")
    if not base_model:
        raise SystemExit("pave eval: --base-model is required without a checkpoint")
    sides = trained.get("sides", [])
    fingerprints = {**trained.get("fingerprints", {}), **(fingerprints or {})}
    samples = load_annotations(annotations)
    versions = open_versions(store, ["video", *sides], fingerprints)
    check_samples(samples, versions, annotations)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = PaveLlava.from_pretrained(base_model, checkpoint or None, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    collate = Collator(tokenizer, model.hf.config.video_token_id, tuple(sides), modality_dtypes(versions), dtype,
                       for_generation=True)
    init_ray()
    rows = []
    for batch in feature_dataset(samples, versions).iter_batches(batch_size=batch_size, batch_format="numpy"):
        batch = collate(batch)
        new_tokens = model.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["video"].to(device),
            {k: v.to(device) for k, v in batch["side"].items()}, max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        predictions = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        rows += [{"id": i, "answer": a, "prediction": p.strip()}
                 for i, a, p in zip(batch["sample_ids"], batch["answers"], predictions)]
    rows.sort(key=lambda r: r["id"])
    metrics = score([r["prediction"] for r in rows], [r["answer"] for r in rows])
    return {"checkpoint": checkpoint, "base_model": base_model, "sides": sides, "metrics": metrics, "predictions": rows}


def write_report(report: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    m = report["metrics"]
    lines = [f"# Evaluation: {name}", "", f"checkpoint: `{report['checkpoint'] or '(base model)'}`", "",
             "| samples | exact match | CIDEr |", "|---:|---:|---:|",
             f"| {m['n']} | {m['exact_match']:.3f} | {m['cider']:.3f} |", "",
             "| id | answer | prediction |", "|---|---|---|"]
    lines += [f"| {r['id']} | {r['answer']} | {r['prediction']} |" for r in report["predictions"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def run(args) -> int:
    from jobs.ray_runtime import output_path

    started = time.perf_counter()
    out = Path(output_path(args.out, "--out"))
    report = evaluate(args.store, args.annotations, args.checkpoint, args.base_model, args.batch_size,
                      args.max_new_tokens, dict(item.split("=", 1) for item in args.fingerprint))
    name = args.name or args.checkpoint or "base model"
    write_report(report, out, name)
    m = report["metrics"]
    print(f"{name}: exact match {m['exact_match']:.3f}, CIDEr {m['cider']:.3f} over {m['n']} samples "
          f"({time.perf_counter() - started:.0f} s) -> {out / 'report.md'}")
    return 0
