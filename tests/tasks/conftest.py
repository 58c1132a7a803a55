"""Fixtures of the task tests: `pave` run in-process, METEOR skipped unless a test asks for it."""
import pytest

from jobs.cli import main


@pytest.fixture
def pave(capsys):
    """Run `pave ARGS...` in-process: (exit code, stdout, stderr)."""
    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(autouse=True)
def quick_meteor(monkeypatch):
    """METEOR loads a 62 MB paraphrase table (about 15 s); only the test that checks it runs it (monkeypatch.undo())."""
    monkeypatch.setattr("tasks.captions._meteor", lambda gts, res: None)
