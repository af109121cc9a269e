"""Divergence from the float model (engine.measure.divergence) and the saved reference (engine.measure.reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.measure import divergence, evaluate, reference
from int8wb.engine.quant import quantize
from int8wb.engine.task import Task
from tests.support.tiny_models import TinyLoaded, WordTokenizer, tiny_llama

EVAL = {"tokens": 512, "window": 64, "batch_size": 4}


def _log_softmax(rows: int, vocab: int, seed: int, sharpness: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharpness * torch.randn(rows, vocab, generator=generator), dim=-1)


def test_top_k_kl_is_the_exact_kl_with_the_whole_vocabulary_and_a_lower_bound_with_less():
    p = _log_softmax(64, 300, seed=1)
    q = torch.log_softmax(p + 0.3 * torch.randn(64, 300, generator=torch.Generator().manual_seed(2)), dim=-1)
    exact = divergence.exact_kl(p, q)
    everything = p.topk(300, dim=-1)
    assert torch.allclose(divergence.top_k_kl(q, everything.indices, everything.values), exact, atol=1e-5)
    few = p.topk(8, dim=-1)
    approx = divergence.top_k_kl(q, few.indices, few.values)
    assert (approx <= exact + 1e-5).all()
    assert float(approx.mean()) > 0.5 * float(exact.mean())


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama(seed=0)
    loaded = TinyLoaded(model, WordTokenizer(model.config.vocab_size))
    variant = quantize.run({"method": "absmax-tensor"}, Task(), loaded, None)
    return loaded, {"absmax-tensor": variant}


def _row(result, method):
    return next(row for row in result["rows"] if row["method"] == method)


def test_every_row_has_its_divergence_from_the_baseline_on_the_same_tokens(tiny):
    loaded, variants = tiny
    result = evaluate.run(EVAL, Task(), loaded, variants)
    base, quant = _row(result, "baseline"), _row(result, "absmax-tensor")
    assert base["same_top"] == 1.0 and base["rms_dp"] < 1e-6
    assert abs(base["kl_mean"]) < quant["kl_mean"] / 100  # a random tiny model predicts almost uniformly
    assert quant["kl_median"] <= quant["kl_p99"] <= quant["kl_p999"] <= quant["kl_max"]
    assert 0.0 <= quant["same_top"] <= 1.0 and quant["rms_dp"] > 0
    # The change from the per-token differences is the ratio of the perplexities, inside its own interval.
    assert quant["relative_change"] == pytest.approx(quant["perplexity"] / base["perplexity"] - 1, rel=1e-4, abs=1e-6)
    assert quant["change_low"] <= quant["relative_change"] <= quant["change_high"]
    detail = result["token_detail"]
    positions = detail["token_ids"].shape[0] * (detail["token_ids"].shape[1] - 1)
    assert detail["methods"]["absmax-tensor"]["kl"].shape == (positions,)
    assert detail["reference_top_ids"].shape == (positions, divergence.SHOWN_TOP)
    assert set(detail["token_ids"].reshape(-1).tolist()) <= set(detail["piece_ids"].tolist())


def test_kl_of_the_pass_is_the_exact_kl_on_a_peaked_model(tiny):
    """The tiny model's vocabulary (256) fits the reference's k only partly: KL stays within 1% of exact."""
    loaded, variants = tiny
    windows = torch.arange(2 * 64).remainder(256).reshape(2, 64)
    with torch.no_grad():
        p = torch.log_softmax(loaded.model(input_ids=windows).logits[:, :-1].reshape(-1, 256).float(), dim=-1)
        q = torch.log_softmax(
            variants["absmax-tensor"].model(input_ids=windows).logits[:, :-1].reshape(-1, 256).float(), dim=-1
        )
    top = p.topk(256, dim=-1)
    assert float(divergence.top_k_kl(q, top.indices, top.values).mean()) == pytest.approx(
        float(divergence.exact_kl(p, q).mean()), rel=1e-3
    )


def test_a_saved_reference_gives_the_same_divergence_as_the_baseline_in_memory(tiny, tmp_path):
    loaded, variants = tiny
    path = tmp_path / "float.npz"
    saved = evaluate.run({**EVAL, "save_reference": str(path)}, Task(), loaded, variants)
    assert saved["reference"]["bytes"] == path.stat().st_size
    assert saved["reference"]["full_logits_bytes"] == 8 * 63 * 256 * 4  # positions x vocabulary x float32
    against_file = evaluate.run({**EVAL, "reference": str(path)}, Task(), loaded, variants)
    for name in ("kl_mean", "kl_max", "same_top", "rms_dp", "relative_change"):
        assert _row(against_file, "absmax-tensor")[name] == pytest.approx(_row(saved, "absmax-tensor")[name], rel=1e-5)
    assert abs(_row(against_file, "baseline")["kl_mean"]) < _row(against_file, "absmax-tensor")["kl_mean"] / 100
    assert against_file["reference"]["file"] == str(path)
    saved_table, against_table = evaluate.format_table(saved), evaluate.format_table(against_file)
    assert "predictions (tiny-llama, exact KL over the whole vocabulary)" in saved_table
    assert f"reference saved: {path}, top 256 per token" in saved_table  # k: at most the vocabulary
    assert f"predictions (the reference file {path}, top 256 per token)" in against_table


@pytest.mark.parametrize("save", [False, True])
def test_the_kl_in_memory_is_the_exact_kl_whatever_the_saved_reference_keeps(tiny, tmp_path, monkeypatch, save):
    """With the float model in the same pass, each position's KL is the full-vocabulary KL, not the top-k bound
    (a saved file keeps only the top 8 here)."""
    loaded, variants = tiny
    monkeypatch.setattr(divergence, "TOP_K", 8)
    params = {**EVAL, "save_reference": str(tmp_path / "float.npz")} if save else EVAL
    result = evaluate.run(params, Task(), loaded, variants)
    windows = torch.from_numpy(result["token_detail"]["token_ids"]).long()
    exact = []
    with torch.no_grad():
        for batch in windows.split(EVAL["batch_size"]):
            p, q = (
                torch.log_softmax(m(input_ids=batch).logits[:, :-1].reshape(-1, 256).float(), dim=-1)
                for m in (loaded.model, variants["absmax-tensor"].model)
            )
            exact.append(divergence.exact_kl(p, q))
    kl = torch.from_numpy(result["token_detail"]["methods"]["absmax-tensor"]["kl"])
    assert torch.allclose(kl, torch.cat(exact), rtol=1e-4, atol=1e-7)
    assert result["reference"]["exact"] and result["reference"]["k"] == (8 if save else None)
    if save:
        assert reference.load(tmp_path / "float.npz").k == 8


def test_a_reference_from_another_tokenizer_or_other_tokens_is_refused_naming_the_difference(tiny, tmp_path):
    loaded, variants = tiny
    path = tmp_path / "float.npz"
    evaluate.run({**EVAL, "save_reference": str(path)}, Task(), loaded, {})

    class OtherTokenizer(WordTokenizer):
        def get_vocab(self):
            return {f"<{i}>": i for i in range(self.vocab_size)}

    other = TinyLoaded(loaded.model, OtherTokenizer(256))
    with pytest.raises(BadInput, match="another tokenizer: WordTokenizer .* this model's is OtherTokenizer"):
        evaluate.run({**EVAL, "reference": str(path)}, Task(), other, {})
    with pytest.raises(BadInput, match="8 windows of 64 tokens .* --tokens 512 --window 64"):
        evaluate.run({**EVAL, "tokens": 256, "reference": str(path)}, Task(), loaded, {})
    text = tmp_path / "other.txt"
    text.write_text("Some other text entirely, repeated. " * 200, encoding="utf-8")
    with pytest.raises(BadInput, match="made on other tokens: .* the first at position"):
        evaluate.run({**EVAL, "corpus": str(text), "reference": str(path)}, Task(), loaded, {})


def _npz(**arrays) -> bytes:
    import io

    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut short
        lambda data: b"not a zip at all",
        lambda data: _npz(meta=np.array('{"format": "something else"}')),
        lambda data: _npz(weights=np.zeros(3)),
    ],
)
def test_a_damaged_reference_file_is_bad_input(tiny, tmp_path, damage):
    loaded, _ = tiny
    path = tmp_path / "float.npz"
    evaluate.run({**EVAL, "save_reference": str(path)}, Task(), loaded, {})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BadInput, match="reference"):
        evaluate.run({**EVAL, "reference": str(path)}, Task(), loaded, {})


def test_reference_arrays_that_do_not_fit_together_are_bad_input(tmp_path):
    ref = divergence.Reference.empty(np.zeros((2, 8)), 4, {"vocab_sha256": "x"}, "m", "c")
    ref.target_logprobs = ref.target_logprobs[:-1]
    path = reference.save(ref, tmp_path / "r.npz")
    with pytest.raises(BadInput, match="damaged reference"):
        reference.load(path)


def test_saving_where_no_file_can_be_written_fails_before_the_evaluation(tiny, tmp_path):
    loaded, _ = tiny
    with pytest.raises(BadInput, match="does not exist"):
        evaluate.run({**EVAL, "save_reference": str(tmp_path / "missing" / "r.npz")}, Task(), loaded, {})
    with pytest.raises(BadInput, match="not both"):
        evaluate.run({**EVAL, "save_reference": "a.npz", "reference": "b.npz"}, Task(), loaded, {})


def test_the_interval_of_the_change_is_from_the_paired_differences():
    ref = divergence.Reference.empty(np.zeros((1, 5)), 2, {}, "m", "c")
    ref.target_logprobs[:] = np.log([0.5, 0.25, 0.5, 0.25])
    compared = divergence.Comparison(ref)
    compared.target_logprobs[:] = np.log([0.25, 0.25, 0.25, 0.25])
    compared.filled = 4
    summary = compared.summary()
    diffs = np.array([math.log(2), 0.0, math.log(2), 0.0])
    half = divergence.Z_95 * diffs.std(ddof=1) / 2
    assert summary["relative_change"] == pytest.approx(math.exp(diffs.mean()) - 1)
    assert summary["change_low"] == pytest.approx(math.exp(diffs.mean() - half) - 1)
    assert summary["rms_dp"] == pytest.approx(math.sqrt((0.25**2 + 0 + 0.25**2 + 0) / 4))
