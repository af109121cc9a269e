"""Forward pre-hooks that measure the inputs of a decoder layer's Linears, each distinct input once.

q/k/v read the same tensor, and so do gate/up. The hooks find which Linears are handed the very same
tensor on the first batch and let only the first of each group fold it into the running statistics
(abs-max, count over the threshold, log10 histogram, through `kernels.ops`), and, for the token axis,
each token's largest |x| (not for the experts of a mixture, whose tokens are a routed subset). Every Linear's output is watched for its largest |x| (engine.quant.precision). The error probe
(engine.quant.layer_errors) still sees every Linear, each with its own weight. engine.quant.scan runs
them layer by layer and turns what they collect (`InputStats`) into the scan's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from int8wb.engine.model.layers import expert_index, features, linear_kind
from int8wb.engine.quant.layer_errors import LayerErrorProbe
from int8wb.engine.vocabulary import EXPERT_KINDS, HIST_BINS, HIST_LOG10_MAX, HIST_LOG10_MIN


@dataclass
class InputStats:
    """The statistics of one distinct Linear input, and the Linears that read it.

    q/k/v read the same tensor, and so do gate/up: their statistics are computed once and carry the
    names of every Linear they feed, with each one's output size (what one floating-point input column
    costs in that Linear's weights) and, when the scan measured errors, each one's SQNR.
    """

    index: int  # position in forward order
    names: list[str]  # full module paths of the Linears that read this input
    layer: int  # decoder layer number (-1 outside the decoder stack)
    kind: str  # see engine.model.layers
    out_features: list[int]  # each Linear's output size, in the order of `names`
    absmax: np.ndarray  # (in_features,) float32
    count_over: np.ndarray  # (in_features,) int64
    hist: np.ndarray  # (HIST_BINS,) int64
    sqnr_db: dict[str, dict[str, float | None]] | None = None  # Linear -> method -> output SQNR, when measured
    # max |W[:, j]| over the Linears that SmoothQuant smooths together with these (engine.quant.smoothing),
    # else over these Linears' own weights: what the GUI's "smoothed" view needs
    weight_absmax: np.ndarray | None = None  # (in_features,) float32
    smoothable: bool = False
    tokens: int = 0  # calibration tokens that reached this input (fewer than all for an expert)
    expert: int | None = None  # the expert these Linears belong to, None outside the experts
    # per calibration token (sequence-major, see engine.quant.token_axis): its largest |x|;
    # None for an expert, which sees only the tokens routed to it
    token_absmax: np.ndarray | None = None  # (tokens,) float32
    output_absmax: dict[str, float] | None = None  # Linear -> the largest |x| of its output

    def to_payload(self, n_tokens: int) -> dict[str, Any]:
        errors = {"sqnr_db": self.sqnr_db} if self.sqnr_db is not None else {}
        return {
            "index": self.index,
            "names": list(self.names),
            "layer": self.layer,
            "kind": self.kind,
            "out_features": list(self.out_features),
            "absmax": self.absmax,
            "count_over": self.count_over,
            "hist": self.hist,
            "weight_absmax": self.weight_absmax,
            "smoothable": self.smoothable,
            "n_tokens": n_tokens,
            "tokens": self.tokens,
            "expert": self.expert,
            "token_absmax": self.token_absmax,
            "output_absmax": dict(self.output_absmax or {}),
            "final": True,
            **errors,
        }


@dataclass
class _Group:
    """Linears that read one input tensor: the first of them computes the statistics for all."""

    names: list[str]
    kind: str
    state: tuple  # (absmax, count, hist) running tensors
    tokens: int = 0  # rows of input seen: fewer than all calibration tokens for an expert
    token_max: list = field(default_factory=list)  # per batch: each token's largest |x| (not for experts)


class StatsHooks:
    """Forward pre-hooks that fold every distinct input of the given Linears into running statistics.

    Linears of one kind that are handed the very same tensor in a forward call (q/k/v, gate/up)
    form one group, found on the first batch; only the group's first Linear computes, so each
    input is measured once (the error probe still sees every Linear, each with its own weight).
    Each hook also asks the task whether to stop, so a cancel lands within one Linear's work
    rather than one decoder layer's. A Linear no token reached (an expert never routed to) is
    reported with zero statistics and zero tokens.
    """

    def __init__(
        self, members, threshold: float, task, probe: LayerErrorProbe | None = None, token_axis: bool = True
    ) -> None:
        self.members, self.threshold, self.task, self.probe = members, threshold, task, probe
        self.token_axis = token_axis  # each token's largest |x| per input, each output's largest |x|
        self.handles: list = []
        self.group_of: dict[str, _Group] = {}
        self.first_batch_inputs: list[tuple[Any, _Group]] = []  # held until every member has been seen
        self.out_features = {name: features(module)[1] for name, module in members}
        self.output_absmax: dict[str, Any] = {}  # Linear -> running max |output| (a 0-d tensor)

    def attach(self) -> StatsHooks:
        for name, module in self.members:
            self.handles.append(module.register_forward_pre_hook(self._hook(name)))
            if self.token_axis or self.probe is not None:
                self.handles.append(module.register_forward_hook(self._output_hook(name)))
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.first_batch_inputs.clear()

    def __enter__(self) -> StatsHooks:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _hook(self, name: str):
        import torch

        from int8wb.kernels import ops

        log10_range = (HIST_LOG10_MIN, HIST_LOG10_MAX)

        def hook(module, args):
            self.task.check_cancelled()
            group = self.group_of.get(name) or self._join(name, module, args[0])
            x = args[0].reshape(-1, features(module)[0])  # (tokens, in_features)
            if group.names[0] == name:
                group.tokens += x.shape[0]
                absmax, count, hist = group.state
                token_max = None
                if self.token_axis and group.kind not in EXPERT_KINDS:  # read in the statistics' one pass
                    token_max = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
                    group.token_max.append(token_max)
                ops.input_stats(x, self.threshold, absmax, count, hist, log10_range, token_max)
            if self.probe is not None:
                self.probe.observe(name, module, x)

        return hook

    def _output_hook(self, name: str):
        import torch

        def hook(module, args, output):
            if self.token_axis:
                low, high = torch.aminmax(output.detach())  # one pass: the largest |x| is -low or high
                largest = torch.maximum(-low, high).float()
                seen = self.output_absmax.get(name)
                self.output_absmax[name] = largest if seen is None else torch.maximum(seen, largest)
            if self.probe is not None:
                self.probe.observe_output(name, output)

        return hook

    def _join(self, name: str, module, x) -> _Group:
        """The group of `name` on its first call: the group of a Linear of its kind that read `x`, or a new one."""

        kind = linear_kind(name)
        group = next((g for seen, g in self.first_batch_inputs if seen is x and g.kind == kind), None)
        if group is None:
            group = _new_group(module, kind)
            self.first_batch_inputs.append((x, group))
        group.names.append(name)
        self.group_of[name] = group
        if len(self.group_of) == len(self.members):
            self.first_batch_inputs.clear()
        return group

    def collect(self, block_index: int, start_index: int) -> list[InputStats]:
        """One InputStats per group, in the order of each group's first Linear among the members."""
        for name, module in self.members:  # never called: an expert no token was routed to
            if name not in self.group_of:
                self.group_of[name] = _new_group(module, linear_kind(name), [name])
        order = [name for name, _ in self.members]
        groups = sorted({id(g): g for g in self.group_of.values()}.values(), key=lambda g: order.index(g.names[0]))
        stats = []
        for i, group in enumerate(groups):
            names = sorted(group.names, key=order.index)
            absmax, count, hist = group.state
            stats.append(
                InputStats(
                    index=start_index + i,
                    names=names,
                    layer=block_index,
                    kind=group.kind,
                    out_features=[self.out_features[n] for n in names],
                    absmax=absmax.cpu().numpy(),
                    count_over=count.cpu().numpy(),
                    hist=hist.cpu().numpy(),
                    tokens=group.tokens,
                    expert=expert_index(names[0]),
                    token_absmax=_joined(group.token_max),
                    output_absmax={n: float(self.output_absmax[n]) for n in names if n in self.output_absmax},
                )
            )
        return stats


def _joined(batches: list):
    """The per-batch per-token maxima as one array, None where none were kept (an expert)."""
    import torch

    return torch.cat(batches).cpu().numpy() if batches else None


def _new_group(module, kind: str, names: list[str] | None = None) -> _Group:
    """A group with zeroed running statistics for the input of `module` (a Linear or a Conv1D)."""
    import torch

    device, in_features = module.weight.device, features(module)[0]
    state = (
        torch.zeros(in_features, dtype=torch.float32, device=device),
        torch.zeros(in_features, dtype=torch.int64, device=device),
        torch.zeros(HIST_BINS, dtype=torch.int64, device=device),
    )
    return _Group(names or [], kind, state)
