"""Skip the decoder layers a measurement cannot change: they replay the output they computed before.

The sensitivity sweep measures the model again and again with one group of Linears quantized, and
then with a growing list of them put back in floating point. Every decoder layer before the first
changed one computes exactly what it computed in the floating-point model (or in the fully quantized
one), on the same batches. So the sweep records each layer's output of those two passes once
(`LayerOutputs.recording`), and a measurement that changes nothing before layer i runs with
layers 0..i-1 swapped for `_Replay` modules that return layer i-1's recorded output without computing
(`LayerOutputs.replaying`). The model's own forward still runs around them (embeddings, masks,
positions, the final norm, the head and whatever the architecture does there), so this works for any
model with one stack of decoder layers.

Memory: layers x tokens x hidden size x dtype bytes, on the model's device (141 MB for 2,048 tokens
of the default model in float32; 537 MB for a 7B Llama in bfloat16).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from int8wb.engine.model.layers import decoder_layers


class LayerOutputs:
    """Each decoder layer's output for each batch of one pass, in the order the batches ran."""

    def __init__(self, model) -> None:
        self.path, self.blocks = decoder_layers(model)
        self.outputs: list[list] = [[] for _ in self.blocks]

    def layer_of(self, module_name: str) -> int:
        """The index of the decoder layer that holds `module_name`; 0 for a module outside the stack."""
        head, _, rest = module_name.partition(f"{self.path}.")
        index = rest.split(".", 1)[0] if head == "" and rest else ""
        return int(index) if index.isdigit() else 0

    @contextmanager
    def recording(self, of=None) -> Iterator[None]:
        """Within the block, every decoder layer's output is kept (the previous recording is dropped).

        `of`: record that model's layers instead, to replay here: the floating-point model a
        quantized one was made from has the same stack and computes what a layer left in floating
        point would.
        """
        self.outputs = [[] for _ in self.blocks]
        blocks = self.blocks if of is None else decoder_layers(of)[1]
        if len(blocks) != len(self.blocks):
            raise ValueError(f"recording {len(blocks)} decoder layers to replay in {len(self.blocks)}")

        def keep(index):
            def hook(module, args, output):
                self.outputs[index].append(_detached(output))

            return hook

        handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def replaying(self, start: int) -> Iterator[None]:
        """Within the block, layers 0..start-1 return the recorded output of layer start-1, batch by batch.

        The batches must be the recorded ones, in the same order, and the layers before `start` unchanged.
        """
        if start <= 0:
            yield
            return
        recorded = self.outputs[start - 1]
        if not recorded:
            raise RuntimeError("replaying layers that were never recorded")
        originals = [self.blocks[i] for i in range(start)]
        try:
            for i, block in enumerate(originals):
                self.blocks[i] = _Replay(block, recorded)
            yield
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block


class _Replay(nn.Module):
    """Stands in for a decoder layer: its n-th call returns the n-th recorded output, computing nothing.

    The plain attributes of the layer it replaces are copied, because some models' forward reads them
    from each layer (which mask a layer takes: `attention_type`).
    """

    def __init__(self, block: nn.Module, recorded: list) -> None:
        super().__init__()
        for name, value in vars(block).items():
            if not name.startswith("_") and not isinstance(value, (nn.Module, torch.Tensor)):
                setattr(self, name, value)
        self.recorded, self.calls = recorded, 0

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        output = self.recorded[self.calls]
        expected = output[0] if isinstance(output, tuple) else output
        if hidden is not None and hidden.shape != expected.shape:
            raise RuntimeError(f"replayed a layer output of shape {tuple(expected.shape)} for {tuple(hidden.shape)}")
        self.calls += 1
        return output


def _detached(output):
    if isinstance(output, tuple):
        return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in output)
    return output.detach()
