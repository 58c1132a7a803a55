import os
import subprocess
import sys

import pytest

from jobs.cli import COMMANDS, user_error_message


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("demo", "make-corpus", "materialize", "train", "eval", "store"):
        assert name in COMMANDS
        assert f"    {name}" in out


HURRIED = {  # a typo'd command -> what its one line must say
    "model-info --base-model /nonexistent": "pave model-info: --base-model /nonexistent: no config.json there",
    "import-checkpoint {tmp} --out {tmp}/out --base-model {tmp} --sides audio": "no config.json there",
    "make-corpus {tmp} --num-videos 2": "not empty",
    "make-corpus {tmp}/new --num-videos 2 --processes 0": "pave make-corpus: processes must be at least 1, got 0",
    "materialize --input {tmp} --store {tmp}/store": "pave materialize: {tmp}: no video files (mp4, mkv, webm, mov, avi, m4v,",
    "store verify {tmp}/typo": "pave store verify: {tmp}/typo: no feature store there; check the path",
    "materialize --input {tmp} --store {tmp}/store --modalities vidoe": "unknown modalities ['vidoe']",
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/run --tiny-base --lr inf":
        "pave train: --optim.lr must be a positive finite number, got inf",
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/run --tiny-base --optim.grad-clip nan":
        "pave train: --optim.grad-clip must be a positive finite number, got nan",
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/run --tiny-base --optim.weight-decay -1":
        "pave train: --optim.weight-decay must be a finite number, 0 or more, got -1.0",
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/run --tiny-base --optim.epochs -2":
        "pave train: --optim.epochs must be a finite number, 0 or more, got -2.0",
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/run --tiny-base --batch-size 0":
        "pave train: --data.batch-size must be at least 1, got 0",
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/run --tiny-base --data.prefetch-batches 0":
        "pave train: --data.prefetch-batches must be at least 1, got 0",
    # --out that is an existing file
    "train --store {tmp} --annotations {tmp}/a.json --out {tmp}/something --tiny-base":
        "pave train: {tmp}/something: a file is in the way of a directory there; give a directory path, or move the "
        "file",
    "eval --annotations {tmp}/a.json --out {tmp}/something": "pave eval: {tmp}/something: a file is in the way",
    "report {tmp}/eval --out {tmp}/something/page": "pave report: {tmp}/something/page: a file is in the way",
}


@pytest.mark.parametrize("command", list(HURRIED))
def test_bad_input_gets_one_line_and_exit_2(tmp_path, command):
    (tmp_path / "something").write_text("x")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text("{}")  # an evaluation, for `pave report`
    result = subprocess.run([sys.executable, "-m", "jobs.cli", *command.format(tmp=tmp_path).split()],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and HURRIED[command].format(tmp=tmp_path) in lines[0], \
        result.stderr


def test_a_full_disk_is_one_line_and_a_bug_is_not(tmp_path):
    with pytest.raises(OSError) as full, open("/dev/full", "w") as f:  # the kernel's always-full device
        f.write("x")
    assert user_error_message(full.value) == "No space left on device; free some space or write elsewhere"
    with pytest.raises(FileNotFoundError) as missing:
        open(tmp_path / "gone.json")
    assert user_error_message(missing.value) == f"No such file or directory: {tmp_path / 'gone.json'}"
    assert user_error_message(ZeroDivisionError("a bug")) is None
    assert user_error_message(KeyError("not ours")) is None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_option_without_importing_heavy_libraries(command):
    """`--help` answers at once: building a command's parser imports none of torch, Ray, transformers, zarr, PyAV."""
    probe = ("import sys, contextlib, io\nfrom jobs.cli import main\n"
             f"with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
             f"    main([{command!r}, '--help'])\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'transformers', 'zarr', 'av'}))\n"
             "print(out.getvalue())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    heavy, _, help_text = done.stdout.partition("\n")
    assert done.returncode == 0 and heavy == "[]", done.stdout + done.stderr
    assert f"usage: pave {command}" in help_text
    if command == "train":  # every run-config field, --config and --dry-run
        assert all(flag in help_text for flag in ("--config FILE", "--dry-run", "--optim.epochs", "--scale.strategy",
                                                  "--model.patches.neighbourhood", "--data.loss-tokens"))


def exit_code_and_whether_ray_started(argv: list) -> subprocess.CompletedProcess:
    """`pave ARGV` in a fresh process that prints its exit code and whether Ray was initialised."""
    probe = ("import ray\nfrom jobs.cli import main\n"
             f"code = main({list(map(str, argv))!r})\nprint(code, ray.is_initialized())")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


@pytest.mark.parametrize("command", ["train --tiny-base --store {tmp} --out {tmp}/run",
                                     "eval --store {tmp} --base-model {tmp} --out {tmp}/eval"])
def test_a_missing_file_is_refused_before_ray_starts_and_nothing_is_created(command, tmp_path):
    """A typo costs no Ray start-up (10-20 s): the inputs are checked before Ray starts, and --out is not made."""
    done = exit_code_and_whether_ray_started(
        [*command.format(tmp=tmp_path).split(), "--annotations", str(tmp_path / "typo.json")])
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert f"{tmp_path / 'typo.json'}: not a readable JSON file" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_manifest_with_nothing_to_store_is_refused_before_ray_starts(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "a", "path": "a.mp4"}\n')  # "path" for "video"
    done = exit_code_and_whether_ray_started(["materialize", "--input", manifest, "--store", tmp_path / "store"])
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert "none of its 1 item(s) can be stored; the first: " in done.stderr and "unknown key(s) 'path'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]
