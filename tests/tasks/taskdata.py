"""Helpers of the task tests (raw files are written from docs/PAPER_TASKS.md by each test)."""
import json
import shutil

import pytest

JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not JAVA, reason="pycocoevalcap's PTB tokenizer and METEOR are Java programs and "
                                "`java` is not on PATH here; the caption metrics are null without it")


def write(path, data, lines=False):
    """`data` as JSON (or JSON lines) at `path`, folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in data) if lines else json.dumps(data))
    return path


def read(path):
    return json.loads(path.read_text())


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(result, *fragments):
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == "", result
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
