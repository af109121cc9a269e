"""The lm-evaluation-harness model over a model already in memory: the baseline or a quantized variant.

lm-eval's own Hugging Face model class (`HFLM`) takes a model instance as
`pretrained`, so the quantized model (Int8Linear modules in place of
nn.Linear) is scored by exactly the code that scores an exported checkpoint
under `lm_eval --model hf`: the same batching, tokenization and
log-likelihood sums. This subclass adds only what a workbench job needs: it
answers cancellation before every forward call and reports progress through
the job's `task`, without lm-eval's own progress bars.

Importing this module imports lm_eval: engine.measure.tasks imports it only
after checking that the `eval` extra is installed.
"""

from __future__ import annotations

import logging

from lm_eval.models.huggingface import HFLM


class WorkbenchLM(HFLM):
    """`HFLM` over `model` and `tokenizer` as they are in memory; `task` sees progress and may cancel."""

    def __init__(self, model, tokenizer, batch_size: int, task) -> None:
        lm_logger = logging.getLogger("lm_eval")
        level = lm_logger.level
        # HFLM warns that arguments for loading a model are ignored when it is handed one: that is the point here.
        lm_logger.setLevel(logging.ERROR)
        try:
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        finally:
            lm_logger.setLevel(level)
        self.task = task
        self.expected_rows = 0  # sequences the current request list will run, for progress
        self.done_rows = 0

    def loglikelihood(self, requests, disable_tqdm: bool = True):
        self.expected_rows, self.done_rows = max(len(requests), 1), 0
        return super().loglikelihood(requests, disable_tqdm=True)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
        self.expected_rows, self.done_rows = max(len(requests), 1), 0
        return super().loglikelihood_rolling(requests, disable_tqdm=True)

    def generate_until(self, requests, disable_tqdm: bool = True):
        self.expected_rows, self.done_rows = max(len(requests), 1), 0
        return super().generate_until(requests, disable_tqdm=True)

    def _model_call(self, inps, attn_mask=None, labels=None):
        self.task.check_cancelled()
        logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        self._advance(inps.shape[0])
        return logits

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        self.task.check_cancelled()
        generated = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self._advance(context.shape[0])
        return generated

    def _advance(self, rows: int) -> None:
        """Progress as the share of the requests run so far (several choices that share a context run once)."""
        self.done_rows += rows
        self.task.progress(min(self.done_rows / self.expected_rows, 1.0))
