"""`int8wb eval --save-reference` and `--reference` from the command line: the divergence in the table and in
--json, and a damaged or foreign reference refused with exit status 2 and one line, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch  # noqa: F401  torch's log handler keeps the stderr it is imported under: pytest's, not a test's capsys

from int8wb.engine.cli import EXIT_USER_ERROR, main

EVAL = ["eval", "--methods", "absmax-tensor", "--tokens", "256", "--window", "64", "--quiet", "--offload", "none"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tests.support.tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("cli") / "tiny")


def test_save_then_compare_with_a_reference_in_the_table_and_in_json(capsys, tiny_model_dir, tmp_path):
    reference = tmp_path / "float.npz"
    assert main([*EVAL, "--model", str(tiny_model_dir), "--save-reference", str(reference)]) == 0
    table = capsys.readouterr().out
    assert "mean KL" in table and f"reference saved: {reference}" in table and reference.is_file()
    assert main([*EVAL, "--model", str(tiny_model_dir), "--reference", str(reference), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "token_detail" not in result and result["reference"]["file"] == str(reference)
    row = next(r for r in result["rows"] if r["method"] == "absmax-tensor")
    assert row["kl_mean"] > 0 and row["change_low"] <= row["relative_change"] <= row["change_high"]


def test_a_damaged_reference_is_one_line_and_exit_status_2(capsys, tiny_model_dir, tmp_path):
    reference = tmp_path / "float.npz"
    reference.write_bytes(b"PK\x03\x04 not really a zip")
    code = main([*EVAL, "--model", str(tiny_model_dir), "--reference", str(reference)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "not a readable int8wb reference" in err and "Traceback" not in err
