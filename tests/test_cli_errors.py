"""The command line's error paths: exit codes, and one line on stderr, never a traceback."""

import json
import subprocess
import sys

import pytest

from transferkit import cli
from transferkit.cli import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("transferkit: ")
    return err.strip()


# Validation must fail before any data is loaded: the data path does not exist, so
# reaching the loader would give a different error.
@pytest.mark.parametrize(
    "line, expected",
    [
        ('epochs = "ten"', '`epochs = "ten"` (a string) is not valid: epochs must be an integer'),
        ("hidden = 5", "`hidden = 5` (an integer) is not valid: hidden must be a list"),
        ("freeze_options = 3", "`freeze_options = 3` (an integer) is not valid: freeze_options"),
        ('lr = "0.1"', '`lr = "0.1"` (a string) is not valid: lr must be a number > 0'),
        ("shots = -1", "`shots = -1` (an integer) is not valid: shots must be an integer >= 1"),
        ("batch_size = 0", "batch_size must be an integer >= 1"),
        ("epochs = 2.5", "`epochs = 2.5` (a number) is not valid"),
        ("seed = true", "`seed = true` (a boolean) is not valid"),
        ("dropout = 1.5", "dropout must be a number in [0, 1)"),
        ("lr = nan", "lr must be a number > 0"),
        ("hidden = [16, 0]", "hidden must be a list of layer sizes"),
        ('input_shape = [8, "x"]', "input_shape must be a list of integers"),
        ('head = "ranker"', 'head must be "classifier" or "regressor"'),
        ('optimizer = "rmsprop"', 'optimizer must be "adam", "adamw" or "sgd"'),
        ("backbone = 3", "`backbone = 3` (an integer) is not valid"),
        ("epochs = 3\nepoch = 3", "unknown option(s) in the run description: epoch"),
        ('freeze = "bogus"', "unknown freeze policy 'bogus'"),
        ('freeze = "train_last"\nfreeze_options = {nope = 1}', "freeze policy 'train_last'"),
    ],
)
def test_a_wrong_toml_value_is_one_clear_line(tmp_path, capsys, line, expected):
    toml = f'backbone = "torch:cnn"\ndata = "{tmp_path / "missing.npz"}"\n{line}\n'
    if line.startswith("backbone"):
        toml = toml.replace('backbone = "torch:cnn"\n', "")
    (tmp_path / "run.toml").write_text(toml)
    assert main(["fit", "--config", str(tmp_path / "run.toml")]) == 2
    err = one_line_error(capsys)
    assert err.startswith("transferkit: error: ")
    assert expected in err


def test_a_wrong_flag_value_is_checked_like_toml(capsys):
    assert main(["fit", "--backbone", "torch:cnn", "--data", "nowhere", "--shots", "-1"]) == 2
    assert "`shots = -1`" in one_line_error(capsys)


def test_missing_files_are_one_clear_line(tmp_path, capsys):
    missing = str(tmp_path / "nope.toml")
    assert main(["fit", "--config", missing]) == 2
    err = one_line_error(capsys)
    assert f"cannot read run description {missing!r}" in err and "--config" in err

    data = str(tmp_path / "nope.npz")
    assert main(["fit", "--backbone", "torch:cnn", "--data", data]) == 2
    assert f"data path {data!r} does not exist" in one_line_error(capsys)

    assert main(["evaluate", str(tmp_path / "no-model"), "--data", "builtin:digits"]) == 2
    err = one_line_error(capsys)
    assert "model directory" in err and "does not exist" in err

    (tmp_path / "model").mkdir()
    assert main(["evaluate", str(tmp_path / "model"), "--data", data]) == 2
    assert "does not exist" in one_line_error(capsys)


def test_an_unexpected_exception_is_one_line_and_exit_1(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("boom\non two lines")

    monkeypatch.setattr(cli, "_backbones", boom)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert main(["backbones"]) == 1
    err = one_line_error(capsys)
    assert err.startswith("transferkit: error: RuntimeError: boom on two lines")
    assert "report it" in err and "TRANSFERKIT_DEBUG=1" in err

    monkeypatch.setenv(cli.DEBUG_ENV, "1")  # the traceback, for a bug report
    with pytest.raises(RuntimeError, match="boom"):
        main(["backbones"])


def test_interrupt_and_closed_stdout_in_process(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_backbones", interrupted)
    assert main(["backbones"]) == 130
    assert one_line_error(capsys) == "transferkit: interrupted"

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_backbones", closed)
    assert main(["backbones"]) == 141
    assert capsys.readouterr().err == ""


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["fit", "--epochs", "ten"])
    assert e.value.code == 2


def test_backbones_that_match_nothing_exit_1(capsys):
    assert main(["backbones", "no_such_backbone*"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "transferkit: no backbone matches 'no_such_backbone*'. "
        "Run `transferkit backbones` to list them all."
    )
    assert main(["backbones", "--json", "no_such_backbone*"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "no backbone matches" in captured.err
    assert main(["backbones", "--framework", "nope"]) == 1
    assert "framework 'nope'" in one_line_error(capsys)


def run_into_closed_pipe(read_first: int) -> subprocess.CompletedProcess:
    """``python -m transferkit backbones | head -c N``, portably: the reader closes its
    end after ``read_first`` bytes (0: before the command writes anything)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferkit", "backbones", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if read_first:
        assert len(proc.stdout.read(read_first)) == read_first
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=120), "", err)


@pytest.mark.parametrize("read_first", [0, 10])
def test_a_closed_stdout_prints_no_broken_pipe_error(read_first):
    done = run_into_closed_pipe(read_first)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.stderr == ""
    # Closed before anything was written, the write must fail: 128 + SIGPIPE, quietly.
    # After 10 bytes the rest may have fit in the pipe's buffer: 0 or 141.
    assert done.returncode == 141 if read_first == 0 else done.returncode in (0, 141)


def test_an_npz_without_labels_is_named(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((4, 8, 8, 1), np.float32))
    code = main(["fit", "--backbone", "torch:mlp", "--data", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "holds no labels" in err and "'y'" in err and "num_classes" not in err
