"""Measured decoding (`bench_decode`): tokens/s against the planned bytes, greedy tokens, bad input.

The tiny planted-outlier Llama runs in a second; the default model's divergence test is slow.
"""

from __future__ import annotations

import pytest

from int8wb.engine.cli import EXIT_USER_ERROR, main
from int8wb.engine.errors import BadInput
from int8wb.engine.measure import decode
from int8wb.engine.model import limits
from int8wb.engine.planning import memory
from int8wb.engine.process.session import Session
from int8wb.engine.quant import quantize, scan
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import MIB
from int8wb.kernels import cpu_gemv
from tests.support.tiny_models import tiny_loaded

FAST = {"new_tokens": 6, "prompt_tokens": 8, "repeats": 2, "copy_mib": 8}


@pytest.fixture(scope="module")
def tiny():
    loaded = tiny_loaded()
    variants = {m: quantize.run({"method": m}, Task(), loaded) for m in ("absmax-tensor", "weight-only")}
    return loaded, variants


def kv_bytes_per_position(model) -> int:
    """K and V of one position in every layer, float32: 2 x layers x KV heads x head_dim x 4."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4


def test_rows_hold_the_planned_bytes_and_what_they_imply(tiny):
    loaded, variants = tiny
    result = decode.run(FAST, Task(), loaded, variants)
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["baseline", "absmax-tensor", "weight-only"]
    # the steps attend to 9..13 positions (prompt of 8, 5 timed steps): 11 on average
    kv = kv_bytes_per_position(loaded.model) * 11
    assert rows["baseline"]["bytes_per_step"] == memory.tensor_bytes(loaded.model)["state_bytes"] + kv
    for method, variant in variants.items():
        assert rows[method]["bytes_per_step"] == memory.tensor_bytes(variant.model)["state_bytes"] + kv
        assert rows[method]["read_terms"]["KV cache read"] == kv
    bandwidth = result["copy_bandwidth"]["bytes_per_s"]
    assert bandwidth > 0 and len(result["copy_bandwidth"]["runs"]) == 2
    for row in rows.values():
        assert len(row["tokens"]) == 6 and row["deterministic"]
        assert row["achieved_bytes_per_s"] == pytest.approx(row["bytes_per_step"] * row["tokens_per_s"])
        assert row["bound_tokens_per_s"] == pytest.approx(bandwidth / row["bytes_per_step"])
        assert row["fraction_of_bound"] == pytest.approx(row["tokens_per_s"] / row["bound_tokens_per_s"])
    assert rows["baseline"]["diverges_at"] is None
    assert rows["baseline"]["text"] == loaded.tokenizer.decode(rows["baseline"]["tokens"])
    assert result["settings"]["prompt_tokens"] == 8 and result["settings"]["shown_tokens"] == decode.SHOWN_TOKENS


def test_a_batch_reads_the_weights_once_and_a_kv_cache_per_sequence(tiny):
    loaded, _ = tiny
    one = decode.run(FAST, Task(), loaded, {})["rows"][0]
    three = decode.run({**FAST, "batch": 3}, Task(), loaded, {})["rows"][0]
    kv = kv_bytes_per_position(loaded.model) * 11
    assert three["bytes_per_step"] - one["bytes_per_step"] == 2 * kv
    assert three["bytes_per_token"] == pytest.approx(three["bytes_per_step"] / 3)
    assert three["tokens"] == one["tokens"]  # the same prompt in every row, row 0 reported


def test_first_difference():
    assert decode.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert decode.first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert decode.first_difference([9], [1]) == 0


@pytest.mark.parametrize(
    "params, message",
    [
        ({"new_tokens": 1}, "new_tokens must be at least 2"),
        ({"repeats": 0}, "repeats must be a positive integer"),
        ({"batch": "2"}, "batch must be a positive integer"),
        ({"copy_mib": True}, "copy_mib must be a positive integer"),
        ({"prompt": "   "}, "prompt must be a non-empty text"),
        ({"prompt_tokens": 250, "new_tokens": 10, "prompt": "x" * 300}, "exceed the model's 256 positions"),
    ],
)
def test_bad_settings_are_refused(tiny, params, message):
    loaded, _ = tiny
    with pytest.raises(BadInput, match=message):
        decode.run({**FAST, **params}, Task(), loaded, {})


def test_the_session_serves_it_for_quantized_variants_only(tiny):
    loaded, variants = tiny
    session = Session()
    session.loaded, session.quantized = loaded, dict(variants)
    result = session.handle("bench_decode", {**FAST, "repeats": 1, "methods": ["weight-only"]}, Task())
    assert [row["method"] for row in result["rows"]] == ["baseline", "weight-only"]
    with pytest.raises(BadInput, match="not quantized yet: vectorwise"):
        session.handle("bench_decode", {"methods": ["vectorwise"]}, Task())


def test_cli_refuses_bad_numbers_before_loading(capsys):
    code = main(["bench-decode", "--new-tokens", "1", "--model", "/no/such/model", "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "new_tokens must be at least 2" in err and "Traceback" not in err


def test_cli_times_every_method_smoothquant_at_its_alpha_included(tmp_path, capsys):
    import json

    from tests.support.tiny_models import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny")
    argv = ["bench-decode", "--model", str(model), "--methods", "vectorwise,smoothquant", "--alpha", "0.7"]
    argv += ["--new-tokens", "3", "--prompt-tokens", "4", "--repeats", "1", "--copy-mib", "1"]
    code = main([*argv, "--calibration-tokens", "128", "--seq-len", "64", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [row["method"] for row in json.loads(out)["rows"]] == ["baseline", "vectorwise", "smoothquant"]


@pytest.mark.slow
def test_default_model_is_deterministic_and_naive_int8_leaves_the_baseline_first(default_model, default_scan):
    """Greedy continuations of the evaluation text's first 32 tokens on SmolLM2-135M (docs/throughput.md)."""
    methods = ("absmax-tensor", "llm-int8")
    variants = {m: quantize.run({"method": m, "threshold": 6.0}, Task(), default_model, default_scan) for m in methods}
    result = decode.run({"new_tokens": 32, "repeats": 2, "copy_mib": 64}, Task(), default_model, variants)
    rows = {row["method"]: row for row in result["rows"]}
    assert all(row["deterministic"] for row in rows.values())  # two runs of each, the same tokens
    assert rows["baseline"]["diverges_at"] is None
    naive, outliers_kept = rows["absmax-tensor"]["diverges_at"], rows["llm-int8"]["diverges_at"]
    assert naive is not None and (outliers_kept is None or naive < outliers_kept), (naive, outliers_kept)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"copy_mib": 10**9}, r"a bandwidth copy of 1,000,000,000 MiB needs at least .* GB of memory"),
        ({"batch": 10**12}, r"decoding 1,000,000,000,000 sequences of up to 14 tokens needs at least"),
    ],
)
def test_sizes_no_machine_holds_are_refused_before_allocating(tiny, params, words):
    loaded, _ = tiny
    with pytest.raises(BadInput, match=words):
        decode.run({**FAST, **params}, Task(), loaded, {})


def test_sizes_beyond_free_memory_are_refused_and_what_fits_runs(tiny, monkeypatch):
    loaded, _ = tiny
    monkeypatch.setattr(limits, "available_bytes", lambda device: 48 * MIB)
    with pytest.raises(BadInput, match=r"bandwidth copy of 32 MiB .* GB are free on cpu: ask for a smaller copy_mib"):
        decode.run({**FAST, "copy_mib": 32}, Task(), loaded, {})
    assert decode.run({**FAST, "copy_mib": 8, "repeats": 1}, Task(), loaded, {})["rows"]


def test_the_session_refuses_a_sensitivity_sweep_beyond_free_memory(tiny, monkeypatch):
    loaded, _ = tiny
    session = Session()
    session.loaded = loaded
    monkeypatch.setattr(limits, "available_bytes", lambda device: 1 * MIB)
    params = {"method": "absmax-tensor", "tokens": 256, "holdout_tokens": 128, "window": 64}
    with pytest.raises(BadInput, match=r"a sensitivity sweep over 256 tokens needs at least .* ask for fewer tokens"):
        session.handle("sensitivity", params, Task())


def test_cli_refuses_a_copy_no_machine_holds_with_a_sentence(tmp_path, capsys):
    from tests.support.tiny_models import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny")
    argv = ["bench-decode", "--model", str(model), "--methods", "weight-only", "--copy-mib", str(10**9), "--quiet"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "bandwidth copy of 1,000,000,000 MiB" in err and "Traceback" not in err


def _greedy_with_and_without_the_small_batch_path(loaded, model, new_tokens: int) -> tuple[list[int], list[int]]:
    ids, _ = decode.prompt_ids(decode.DecodeSettings(prompt_tokens=8), loaded.tokenizer)
    new = decode.greedy(model, ids, new_tokens, "cpu", Task()).tokens
    with cpu_gemv.bypassed():
        old = decode.greedy(model, ids, new_tokens, "cpu", Task()).tokens
    return new, old


def test_each_method_decodes_the_same_tokens_on_the_small_batch_path(tiny):
    """kernels.cpu_gemv (one token per step) against the GEMM paths it replaces, greedy tokens compared."""
    loaded, _ = tiny
    scanned = scan.run({"tokens": 128, "seq_len": 64}, Task(), loaded)
    for method in ("vectorwise", "llm-int8", "llm-int8-dynamic", "absmax-tensor", "weight-only", "q8_0"):
        model = quantize.run({"method": method, "threshold": 6.0}, Task(), loaded, scanned).model
        new, old = _greedy_with_and_without_the_small_batch_path(loaded, model, 12)
        assert new == old, method


@pytest.mark.slow
def test_default_model_decodes_the_same_tokens_on_the_small_batch_path(default_model, default_scan):
    for method in ("vectorwise", "llm-int8", "weight-only", "q8_0"):
        model = quantize.run({"method": method, "threshold": 6.0}, Task(), default_model, default_scan).model
        new, old = _greedy_with_and_without_the_small_batch_path(default_model, model, 32)
        assert new == old, method
