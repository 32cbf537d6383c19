"""The `utkface` command and the stages as a user meets them: help and light commands start
without TensorFlow, bad params end every stage with one line per bad key, a command only
refuses bad values in the sections it reads, and a stage that crashes keeps its last lines."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import REPO

from utkface.cli.main import build_parser
from utkface.params import run_main

BAD_PARAMS = "seed: -1\ningest:\n  image_size: abc\n"
BAD_LINES = [
    "  seed must be an int between 0 and 2147483647, got -1",
    "  ingest.image_size must be an int between 32 and 256, got 'abc'",
]
LOADED_LIBRARIES = """
import sys
from utkface.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    print("exit", exit.code)
heavy = ("tensorflow", "keras", "cv2", "matplotlib")
print("loaded:" + ",".join(name for name in heavy if name in sys.modules))
"""


def run_cli(args: list[str], cwd: Path) -> tuple[str, str]:
    """(last two stdout lines: exit status, heavy libraries loaded) and stderr."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED_LIBRARIES, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        # this checkout's code, not the installed package's
        env={
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
            "PATH": "",
            "PYTHONPATH": str(REPO),
        },
    )
    *_, status, loaded = done.stdout.splitlines()
    return f"{status}\n{loaded}", done.stderr


def test_help_lists_every_command_without_loading_tensorflow(tmp_path: Path) -> None:
    out, _ = run_cli(["--help"], tmp_path)
    assert out == "exit 0\nloaded:"


ARROW_LOADED = """
import sys
from utkface.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("pandas", "pandas" in sys.modules, "arrow", sys.modules.get("pyarrow") is not None)
"""


@pytest.mark.parametrize(
    ("command", "arrow"), [("predict", False), ("serve", False), ("promote", True)]
)
def test_the_answering_commands_run_pandas_without_arrow(
    command: str, arrow: bool, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ARROW_LOADED, command, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "", "PYTHONPATH": str(REPO)},
    )
    assert done.stdout.splitlines()[-1] == f"pandas True arrow {arrow}"


@pytest.mark.parametrize(("command", "count"), [("serve", "--workers"), ("predict", "--jobs")])
def test_process_counts_under_one_are_refused(
    command: str, count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = ["face.jpg"] if command == "predict" else []
    with pytest.raises(SystemExit) as exit:
        build_parser(command).parse_args([command, count, "0", *paths])
    assert exit.value.code == 2
    assert f"{count}: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_promote_runs_without_loading_tensorflow(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("register: {model_name: nothing-yet}\n")
    out, err = run_cli(["promote"], tmp_path)
    assert out == "exit 2\nloaded:"  # nothing to promote in an empty store
    assert "model 'nothing-yet' has no 'challenger' version" in err


BAD_REGISTER = "register:\n  max_request_bytes: -5\n  model_name: 7\n"
BAD_REGISTER_LINES = [
    "  register.model_name must be a string, got 7",
    "  register.max_request_bytes must be an int of at least 2000, got -5",
]


# Every command that reads params.yaml, with arguments that get it that far
PARAMS_COMMANDS = [["promote"], ["serve"], ["app"], ["predict", "face.png"]]


@pytest.mark.parametrize("args", PARAMS_COMMANDS, ids=lambda args: args[0])
def test_commands_with_bad_params_they_read_print_one_line_per_key_and_exit_2(
    args: list[str], tmp_path: Path
) -> None:
    (tmp_path / "params.yaml").write_text(BAD_PARAMS + BAD_REGISTER)
    (tmp_path / "face.png").write_bytes(b"never read")
    out, err = run_cli(args, tmp_path)
    assert out.splitlines()[0] == "exit 2"  # as documented: invalid params.yaml or arguments
    assert err.splitlines()[0] == f"{args[0]}: invalid params.yaml:"
    assert sorted(err.splitlines()[1:]) == sorted(BAD_REGISTER_LINES)  # not seed or ingest's


@pytest.mark.slow
def test_commands_ignore_bad_values_in_sections_they_do_not_read(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(BAD_PARAMS + "register: {model_name: nothing-yet}\n")
    out, err = run_cli(["promote"], tmp_path)
    assert out == "exit 2\nloaded:"  # as with good params: nothing to promote yet
    assert "model 'nothing-yet' has no 'challenger' version" in err


@pytest.mark.parametrize("stage", ["ingest", "validate", "balance", "split", "tune", "train"])
def test_stages_with_bad_params_print_one_line_per_key_and_exit_2(
    stage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(BAD_PARAMS)
    module = importlib.import_module(f"stages.{stage}")
    with pytest.raises(SystemExit) as stopped:
        run_main(stage, module.main)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"{stage}: invalid params.yaml:", *BAD_LINES]


def test_a_stage_process_with_bad_params_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(BAD_PARAMS)
    done = subprocess.run(
        [sys.executable, "-m", "stages.evaluate"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert without_tensorflow_log(done.stderr) == ["evaluate: invalid params.yaml:", *BAD_LINES]


CRASH = """\
import ctypes
import sys

print("crash: the last line before the crash", file=sys.stderr, flush=True)
ctypes.string_at(0)  # a native crash: SIGSEGV
"""


def test_a_stage_process_that_crashes_natively_keeps_its_last_stderr_lines(
    tmp_path: Path,
) -> None:
    """A stage's stderr is the process's own (no pipe), so its caller (DVC) gets every line
    even when the process dies natively, faulthandler's traceback written while it dies too."""
    stages = tmp_path / "stages"
    stages.mkdir()
    shutil.copy2(REPO / "stages" / "__init__.py", stages)
    (stages / "crash.py").write_text(CRASH)
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "stages.crash"],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGSEGV
    lines = without_tensorflow_log(done.stderr)
    assert lines[:2] == [
        "crash: the last line before the crash",
        "Fatal Python error: Segmentation fault",
    ]
    assert f'File "{stages / "crash.py"}", line 5 in <module>' in done.stderr


# TensorFlow 2.21 writes its C++ banners through absl before absl's logging is set up, and
# TF_CPP_MIN_LOG_LEVEL no longer hides them: 'WARNING: All log messages before
# absl::InitializeLog() ...' and 'I0000 00:00:... port.cc:153] oneDNN custom operations ...'
# (docs/troubleshooting.md).
TENSORFLOW_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} )")


def without_tensorflow_log(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not TENSORFLOW_LOG.match(line)]


def test_without_tensorflow_log_keeps_everything_else() -> None:
    stderr = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796231457.360342   23050 port.cc:153] oneDNN custom operations are on.\n"
        "evaluate: invalid params.yaml:\n"
        "Traceback (most recent call last):\n"
    )
    assert without_tensorflow_log(stderr) == [
        "evaluate: invalid params.yaml:",
        "Traceback (most recent call last):",
    ]
