"""Fixtures of the task tests: METEOR skipped unless a test asks for it (`pave` in-process: tests/conftest.py)."""
import pytest


@pytest.fixture(autouse=True)
def quick_meteor(monkeypatch):
    """METEOR loads a 62 MB paraphrase table (about 15 s); only the test that checks it runs it (monkeypatch.undo())."""
    monkeypatch.setattr("tasks.captions._meteor", lambda gts, res: None)
