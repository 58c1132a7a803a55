"""What every task module needs: the one error class, reading raw and prediction files, and a conversion's outputs
(annotations per split, the `pave materialize` manifest, the list of dropped items).

Prediction files come in two kinds. The official eval outputs are joined to the questions as the official
evaluators join them (by position, or by id for AVSD's COCO results), checking every id they carry against the
question at that position; `pave eval`'s report.json
({"predictions": [{"id", "answer", "prediction"}]}, sorted by id) is joined by our sample ids, which
`pave data convert` derives from the same raw file that `pave score --annotations` reads."""
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from featurestore import ID_RULE, id_problem

SPLITS = ("train", "val", "test")
# The parts of a drop reason that name its item (quoted values, paths, numbers): masked to group reasons by kind.
ITEM_PARTS = re.compile(r"'[^']*'|\"[^\"]*\"|\S*/\S*|\d+")
MARKER = "<image>\n"  # every official converter and eval script puts it before the first question


class TaskDataError(ValueError):
    """A raw file, prediction file or task name that cannot be used; the message names the file, the item and what
    to do."""


def note(message: str) -> None:
    """A line on stderr about how a result was obtained (stdout carries only the result)."""
    print(f"note: {message}", file=sys.stderr)


def some(values) -> str:
    """A few of `values` for a message: 'a', 'b', 'c' (+7 more)."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:3])
    return shown + (f" (+{len(values) - 3} more)" if len(values) > 3 else "")


def read_json(path: Path, expected: str):
    """The parsed JSON of `path`; TaskDataError naming the file and what it should be otherwise."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file; expected {expected}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaskDataError(f"{path}: not a JSON file ({err}); expected {expected}") from None


def read_records(path: Path, expected: str) -> list:
    """A JSON list, or JSON lines (one object a line), as a list."""
    path = Path(path)
    try:
        return read_json(path, expected)
    except TaskDataError:
        if not path.is_file():
            raise
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TaskDataError(f"{path} line {n}: not JSON ({err}); expected {expected}") from None
    return records


def read_list(path: Path, expected: str) -> list:
    raw = read_json(path, expected)
    if not isinstance(raw, list):
        raise TaskDataError(f"{path}: expected {expected}")
    return raw


def parsed(items: list, parse, drop) -> list:
    """parse(k, item) of each item that it accepts; the others, for which it returns the reason, go to drop(item
    locator, reason)."""
    found = []
    for k, item in enumerate(items):
        result = parse(k, item)
        if isinstance(result, str):
            drop(f"entry {k}", result)
        else:
            found.append(result)
    return found


def split_of(path: Path) -> str:
    """train, val or test, from the raw file's name (as the datasets name them: avqa-test.json, ScanQA_v1.0_val.json,
    mock_test_set4DSTC10-AVSD_from_DSTC7_singref.json)."""
    found = [s for s in SPLITS if re.search(rf"(?<![a-z]){s}(?![a-z])", Path(path).name.lower())]
    if len(found) != 1:
        raise TaskDataError(f"{path}: cannot tell its split from the file name; keep the dataset's own name, which "
                            "says train, val or test")
    return found[0]


def raw_by_split(paths: list[Path]) -> dict[str, Path]:
    """Each raw file under its split; two files of one split would make colliding ids, so they are refused."""
    found = {}
    for path in paths:
        split = split_of(path)
        if split in found:
            raise TaskDataError(f"{path} and {found[split]} are both {split} files; convert one file per split "
                                "(another --out for the other)")
        found[split] = path
    return found


class Skipped:
    """The drop callback of a scorer: items `pave data convert` drops are not questions; one note says how many."""

    def __init__(self, annotations: Path):
        self.annotations, self.reasons = annotations, []

    def __call__(self, item: str, reason: str) -> None:
        self.reasons.append(f"{item}: {reason}")

    def report(self) -> None:
        if self.reasons:
            note(f"{len(self.reasons)} item(s) of {self.annotations} are not scored, as `pave data convert` drops "
                 f"them (first: {self.reasons[0]})")


def qa_conversation(pairs: list[tuple[str, str]]) -> list[dict]:
    """LLaVA turns of (question, answer) pairs, the video marker before the first question only."""
    turns = []
    for k, (question, answer) in enumerate(pairs):
        turns += [{"from": "human", "value": (MARKER if k == 0 else "") + question}, {"from": "gpt", "value": answer}]
    return turns


@dataclass
class Conversion:
    """What `pave data convert` writes: annotation samples per split, the videos they name, the dropped items.

    With `video_roots`, each video is looked up under them in order; a sample whose video is in none is dropped,
    as the official loaders drop it (silently, there), and the manifest lists the absolute paths found."""

    video_roots: list[Path] = field(default_factory=list)
    splits: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    videos: dict[str, str] = field(default_factory=dict)  # store item id -> path (absolute with roots)
    dropped: list[dict] = field(default_factory=list)
    _ids: dict[str, set] = field(default_factory=lambda: defaultdict(set))

    def drop(self, source: Path, item: str, reason: str) -> None:
        self.dropped.append({"file": str(source), "item": item, "reason": reason})

    def add(self, split: str, source: Path, item: str, sample_id: str, video_id: str, video_path: str,
            conversations: list[dict]) -> None:
        """One annotation sample; dropped instead (with the reason) if an id breaks the rule, the id is taken, or the
        video cannot be found."""
        for what, value in (("sample id", sample_id), ("video id", video_id)):
            if problem := id_problem(value):
                return self.drop(source, item, f"{what} {value!r} {problem}; ids must be {ID_RULE}")
        if sample_id in self._ids[split]:
            return self.drop(source, item, f"duplicate {split} id {sample_id!r}; the first one is kept")
        found = self._find(video_path)
        if found is None:
            return self.drop(source, item, f"video {video_path} is under none of --videos "
                             f"{' '.join(map(str, self.video_roots))} (the official loader drops such samples)")
        self._ids[split].add(sample_id)
        self.videos[video_id] = found
        self.splits[split].append({"id": sample_id, "video": video_id, "conversations": conversations})

    def drop_reasons(self, shown: int = 2) -> str:
        """The dropped items' reasons, most common kind first: '12x <one reason of that kind>; 3x ...'."""
        kinds = defaultdict(list)
        for dropped in self.dropped:
            kinds[ITEM_PARTS.sub("_", dropped["reason"])].append(dropped["reason"])
        ranked = sorted(kinds.values(), key=len, reverse=True)
        return "; ".join(f"{len(reasons)}x {reasons[0]}" for reasons in ranked[:shown]) + (
            f" (+{len(ranked) - shown} other kinds)" if len(ranked) > shown else "")

    def _find(self, video_path: str) -> str | None:
        if not self.video_roots:
            return video_path
        return next((str((root / video_path).resolve()) for root in self.video_roots
                     if (root / video_path).exists()), None)

    def write(self, out: Path) -> tuple[dict[str, Path], list[Path]]:
        """Write OUT/{split}.json, OUT/dropped.jsonl and (with video roots) OUT/manifest.jsonl; (the paths by name,
        the files of these names that an earlier conversion left and this one removed, so that OUT holds this
        conversion only)."""
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for split, samples in self.splits.items():
            written[split] = out / f"{split}.json"
            written[split].write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n")
        written["dropped"] = out / "dropped.jsonl"
        written["dropped"].write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in self.dropped))
        if self.video_roots:
            written["manifest"] = out / "manifest.jsonl"
            written["manifest"].write_text("".join(json.dumps({"id": vid, "video": path}, ensure_ascii=False) + "\n"
                                                   for vid, path in sorted(self.videos.items())))
        stale = [out / name for name in [*(f"{split}.json" for split in SPLITS), "manifest.jsonl"]
                 if (out / name).exists() and out / name not in written.values()]
        for path in stale:
            path.unlink()
        return written, stale


@dataclass(frozen=True)
class Prediction:
    key: str  # the id the file gives it
    text: str
    answer: str | None  # the target the file itself carries (pave eval's "answer", Music-AVQA's "answer")
    where: str  # "FILE entry 3", for messages


PAVE_FORMAT = "`pave eval`'s report.json"


def read_predictions(path: Path, official: str, key: str, text: str, answer: str = "") \
        -> tuple[bool, list[Prediction]]:
    """(whether it is `pave eval`'s report, its predictions in file order). The official format is described by
    `official` (for messages) and its field names: `key` (the question or video id), `text`, `answer` (optional)."""
    expected = f"{official} or {PAVE_FORMAT}"
    raw = read_records(path, expected)
    pave = isinstance(raw, dict) and isinstance(raw.get("predictions"), list)
    if pave:
        raw, key, text, answer = raw["predictions"], "id", "prediction", "answer"
    if not isinstance(raw, list):
        raise TaskDataError(f"{path}: expected {expected}")
    predictions = []
    for k, row in enumerate(raw):
        where = f"{path} entry {k}"
        if not isinstance(row, dict) or not isinstance(row.get(text), str) or row.get(key) is None:
            raise TaskDataError(f"{where}: expected an object with {key!r} and a text {text!r}, as in {expected}")
        target = row.get(answer) if answer else None
        predictions.append(Prediction(str(row[key]), row[text], target if isinstance(target, str) else None, where))
    return pave, predictions


def by_key(ids: list[str], predictions: list[Prediction], path: Path, annotations: Path, partial: bool = False) \
        -> list[Prediction | None]:
    """The prediction of each id; TaskDataError for a prediction of an unknown id, two for one id, or (unless
    `partial`, where a missing one is None) an id without one."""
    _some_questions(ids, annotations)
    found, known = {}, set(ids)
    for p in predictions:
        if p.key in found:
            raise TaskDataError(f"{p.where}: a second prediction for {p.key!r}; keep one per question")
        found[p.key] = p
    if unknown := [p.key for p in predictions if p.key not in known]:
        raise TaskDataError(f"{path}: {len(unknown)} prediction(s) for ids not in {annotations}: {some(unknown)}; "
                            "score the predictions against the raw file their annotations were converted from")
    missing = [i for i in ids if i not in found]
    if missing and not partial:
        raise TaskDataError(f"{path}: no prediction for {len(missing)} of the {len(ids)} questions of {annotations}: "
                            f"{some(missing)}; generate answers for every question of the converted eval split")
    return [found.get(i) for i in ids]


def by_position(ids: list[str], predictions: list[Prediction], path: Path, annotations: Path, keys: list[str],
                what: str) -> list[Prediction]:
    """The official join: the k-th prediction answers the k-th question. The id each prediction carries (`what`:
    the question's id, or its video's when that is all the format holds) must be keys[k], so that a reordered or
    shifted file is refused instead of scored against the wrong questions."""
    _some_questions(ids, annotations)
    if len(predictions) != len(ids):
        raise TaskDataError(f"{path}: {len(predictions)} predictions for the {len(ids)} questions of {annotations}; "
                            "the official format is joined by position, so it needs one per question, in file order")
    for question_id, key, p in zip(ids, keys, predictions):
        if p.key != key:
            raise TaskDataError(f"{p.where}: {what} {p.key!r} where question {question_id!r} of {annotations} has "
                                f"{key!r}; the official format is joined by position: keep the question file's order")
    return predictions


def _some_questions(ids: list[str], annotations: Path) -> None:
    if not ids:
        raise TaskDataError(f"{annotations}: no questions to score; pass the raw eval file (val or test) of the task")
