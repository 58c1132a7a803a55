"""Item (video) ids: one rule for every command. The store refuses an id that breaks it (PartWriter), `pave
materialize` turns such an input into a failure row (pipelines/sources.py), and annotations may name only ids that
follow it (pipelines/annotations.py): every item the store holds can be trained on.

The rule is wide on purpose: ids are the users' own names for their videos (file names, manifest and WebDataset
ids), and the store never makes a path of one (claims hash it, parts keep it in JSON). A narrow set such as ASCII
letters and digits would only make users rename "clip 01.mp4" or "café.mp4", and their annotations, to train on
them. What it refuses would break or mislead something: a path escape (for tools that do name files by id),
control characters (they break the summary's and the logs' lines), whitespace at either end (invisible in every
listing, so an id that differs only there looks the same as another)."""
import unicodedata

ID_RULE = ("non-empty text without control characters, whitespace at either end, a backslash, a leading '/', or "
           "'.' or '..' between slashes")


def id_problem(value) -> str:
    """What makes `value` break the id rule, "" when it follows it."""
    if not isinstance(value, str) or not value:
        return "is empty or not text"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):  # Cs: undecodable bytes of a file name
        return "holds a control character"
    if value != value.strip():
        return "starts or ends with whitespace"
    if value.startswith("/") or "\\" in value or {".", ".."} & set(value.split("/")):
        return "could escape a directory if used as a path"
    return ""
