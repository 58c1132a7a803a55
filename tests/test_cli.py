import subprocess
import sys

from jobs.cli import COMMANDS


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("demo", "make-corpus", "materialize", "train", "eval", "store"):
        assert name in COMMANDS
        assert f"    {name}" in out
