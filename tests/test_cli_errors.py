"""Bad input gets one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch  # noqa: F401  torch's log handler keeps the stderr it is imported under: pytest's, not a test's capsys

from int8wb.engine.cli import EXIT_USER_ERROR, main


@pytest.fixture
def tiny_model_dir(tmp_path):
    from tests.support.tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path / "tiny")


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["scan", "--threshold", "nan"], "finite positive"),
        (["scan", "--threshold", "-1"], "finite positive"),
        (["eval", "--methods", "absmax-tensor,int4-magic"], "unknown method(s) int4-magic"),
        (["scan", "--model", "/no/such/model"], "model not found: /no/such/model"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    code, err = _run(capsys, *argv, "--quiet")
    assert code == EXIT_USER_ERROR
    assert message in err


def test_empty_corpus(capsys, tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("  \n\n ")
    code, err = _run(capsys, "scan", "--corpus", str(corpus), "--quiet")
    assert code == EXIT_USER_ERROR and "corpus file is empty" in err


def test_corpus_that_is_not_utf8(capsys, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    code, err = _run(capsys, "scan", "--corpus", str(corpus), "--quiet")
    assert code == EXIT_USER_ERROR and "not UTF-8" in err


def _special_corpus(kind: str, tmp_path) -> str:
    if kind == "directory":
        return str(tmp_path)
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")
        return str(tmp_path / "pipe")
    return "/dev/zero"


@pytest.mark.parametrize(
    "kind, message",
    [
        ("directory", "is a directory: give a UTF-8 text file"),
        ("fifo", "is not a regular file (a device, pipe or socket)"),
        ("device", "is not a regular file (a device, pipe or socket)"),
    ],
)
def test_a_corpus_that_is_not_a_regular_file_says_what_it_is(capsys, tmp_path, kind, message):
    if kind == "device" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    code, err = _run(capsys, "scan", "--corpus", _special_corpus(kind, tmp_path), "--quiet")
    assert code == EXIT_USER_ERROR and message in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["scan", "--corpus", "c" * 100_000], "corpus path is too long for the file system (100,000 characters)"),
        (["plan", "--preset", "p" * 100_000], "unknown preset 'ppp"),
        (["plan", "--preset", "../presets/opt-6.7b"], "unknown preset"),
    ],
)
def test_names_too_long_for_the_file_system_are_bad_input(capsys, argv, message):
    code, err = _run(capsys, *argv)
    assert code == EXIT_USER_ERROR and message in err and len(err) < 2000  # the name is not repeated whole


@pytest.mark.parametrize("target", ["nan", "inf"])
def test_a_sensitivity_target_that_is_not_finite_is_refused_before_the_model_loads(capsys, target):
    code, err = _run(capsys, "sensitivity", "--model", "/no/such/model", "--target", target, "--quiet")
    assert code == EXIT_USER_ERROR and f"target must be a finite percentage, got {float(target)}" in err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--context", 10**21, "context 1,000,000,000,000,000,000,000 is beyond any real model or server"),
        ("--batch", 10**20, "batch 100,000,000,000,000,000,000 is beyond any real model or server"),
    ],
)
def test_plan_settings_beyond_any_real_machine_are_refused(capsys, option, value, message):
    code, err = _run(capsys, "plan", "--preset", "opt-6.7b", option, str(value))
    assert code == EXIT_USER_ERROR and message in err and "a plan takes at most" in err


def test_an_export_inside_a_file_says_the_parent_is_a_file(capsys, tmp_path):
    parent = tmp_path / "notes.txt"
    parent.write_text("a file, not a folder")
    for out in (parent / "sub", parent / "sub" / "deeper"):
        code, err = _run(capsys, "export", "--model", "/no/such/model", "--out", str(out), "--quiet")
        assert code == EXIT_USER_ERROR and f"{parent} is a file, not a folder" in err
    assert parent.read_text() == "a file, not a folder"


def test_directory_without_config(capsys, tmp_path):
    code, err = _run(capsys, "scan", "--model", str(tmp_path), "--quiet")
    assert code == EXIT_USER_ERROR and "no config.json" in err


def test_truncated_safetensors(capsys, tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, err = _run(capsys, "scan", "--model", str(tiny_model_dir), "--quiet")
    assert code == EXIT_USER_ERROR and "could not load the model" in err


def test_corrupt_gguf(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INT8WB_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    code, err = _run(capsys, "scan", "--model", str(gguf), "--quiet")
    assert code == EXIT_USER_ERROR and "could not read the GGUF file" in err
    assert not any((tmp_path / "cache").glob("broken*")), "a failed conversion must leave nothing in the cache"


def test_console_script_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "int8wb.engine.cli", "scan", "--threshold", "nan"], capture_output=True, text=True
    )
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip() == "int8wb: error: threshold must be a finite positive number, got nan"


@pytest.mark.slow
def test_scan_json_names_the_recurring_attention_dimension(capsys):
    code = main(["scan", "--tokens", "512", "--json", "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    attention = report["report"]["attn_in"]
    assert attention["top_dims"][0]["dim"] == 247
    assert len(report["layers"]) == 30 * 7


def test_gui_without_a_display_says_what_to_do(capsys, monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("only Linux decides the display from the environment")
    code, err = _run(capsys, "gui")
    assert code == EXIT_USER_ERROR and "xvfb-run -a int8wb gui" in err


def test_plan_error_is_the_one_line_every_command_prints(capsys):
    """`int8wb plan` leaves its errors to `int8wb`'s one handler: the same prefix as every other command."""
    code, err = _run(capsys, "plan", "--preset", "no-such-architecture")
    assert code == EXIT_USER_ERROR
    assert err.startswith("int8wb: error: ") and err.count("\n") == 1


def test_python_m_engine_names_itself_in_its_error(capsys, monkeypatch):
    """`python -m int8wb.engine` turns a user error into one line under its own name, as `int8wb` does."""
    from int8wb.engine import __main__ as engine_main

    monkeypatch.setattr(sys, "argv", ["python -m int8wb.engine", "--listen", "tcp://127.0.0.1:0"])
    assert engine_main.run() == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "python -m int8wb.engine: error: without --key-stdin, give --connection-file" in err
    assert "Traceback" not in err
