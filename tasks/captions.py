"""The COCO caption metrics as pycocoevalcap 1.2 computes them, which the official AVSD (COCOEvalCap) and ScanQA
evaluators run: the PTB tokenizer (lower-cases, drops punctuation tokens), then BLEU-1..4, METEOR, ROUGE-L and
CIDEr(-D, IDF from the scored references).

The tokenizer and METEOR are Java programs; the pycocoevalcap wheel ships their jars (stanford-corenlp-3.4.1.jar,
meteor-1.5.jar) and METEOR's paraphrase table (meteor/data/paraphrase-en.gz). Without `java` on PATH every caption
metric is null (nothing can be tokenized as the official scripts tokenize), and a METEOR that fails to start is null:
each with a note on stderr, never a number computed another way. SPICE is always null: pycocoevalcap downloads
Stanford CoreNLP models for it on first use, which a scorer should not do."""
import contextlib
import io
import shutil

from tasks.common import note

NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


def coco_scores(references: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float | None]:
    """Corpus scores of `predictions` (id -> text) against `references` (id -> texts), by pycocoevalcap's name."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    scores = dict.fromkeys(NAMES)
    note("SPICE is not computed (null): pycocoevalcap's SPICE downloads Stanford CoreNLP on first use")
    if shutil.which("java") is None:
        note("BLEU, METEOR, ROUGE_L and CIDEr are not computed (null): pycocoevalcap's PTB tokenizer and METEOR are "
             "Java programs and `java` is not on PATH; install a Java runtime (e.g. openjdk-17-jre-headless)")
        return scores
    tokenize = PTBTokenizer().tokenize
    gts = tokenize({k: [{"caption": r} for r in refs] for k, refs in references.items()})
    res = tokenize({k: [{"caption": predictions[k]}] for k in references})
    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its length ratios; stdout is for the result
        scores.update(zip(NAMES[:4], Bleu(4).compute_score(gts, res)[0]))
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    scores["METEOR"] = _meteor(gts, res)
    return {name: None if value is None else float(value) for name, value in scores.items()}


def _meteor(gts: dict, res: dict) -> float | None:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = None
    try:
        meteor = Meteor()
        return meteor.compute_score(gts, res)[0]
    except (OSError, ValueError) as err:  # java could not start it, or it answered nothing (out of memory)
        note(f"METEOR is not computed (null): pycocoevalcap's meteor-1.5.jar failed ({err})")
        return None
    finally:  # Meteor.__del__ (which stops the jar) takes this lock: a failure must not leave it held
        if meteor is not None and meteor.lock.locked():
            meteor.lock.release()
