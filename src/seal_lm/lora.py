"""Batched LoRA: K independent adapters on one frozen base model, trained in one forward/backward.

Why hand-written: SEAL evaluates many self-edits of one context, each with a *fresh* LoRA. peft
trains one adapter at a time (its mixed-adapter batches are inference-only), so a straightforward
loop pays Python/autograd/optimizer overhead K times on tiny batches of 20-60-token lines. Here every
batch row carries the index of its own adapter; each wrapped linear gathers that row's A and B and
adds `scale * B_k A_k x` to the frozen base output. Losses are summed over adapters (each adapter's
loss is the mean over its own tokens), so adapter k's gradient is exactly what it would get alone,
and the optimizer (`BatchedAdamW`) keeps separate step counts, learning rates and an active mask per
adapter. Training K adapters together therefore gives the same losses and weights as training them
one by one (tests/test_lora.py checks this), only faster.

The base weights are never modified, so `reset()` (fresh A, zero B) restores the base model's
outputs exactly, with no reload. `merge_into_base()` is the one deliberate exception (continual setting).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """Shape of the inner-loop adapters (paper defaults for knowledge incorporation)."""

    r: int = 32
    """LoRA rank."""
    alpha: float = 64.0
    """LoRA scaling numerator: the update is (alpha / r) * B A."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Names (last path component) of the nn.Linear modules that get an adapter."""
    dropout: float = 0.0
    """Dropout on the adapter input (0 keeps batched and one-by-one training bit-comparable)."""

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class MultiLoRALinear(nn.Module):
    """A frozen nn.Linear plus K LoRA adapters; row b of the batch uses adapter `index[b]`."""

    def __init__(self, base: nn.Linear, n_adapters: int, cfg: LoRAConfig, owner: "MultiLoRA"):
        super().__init__()
        self.base = base
        self.scale = cfg.scale
        p = dict(device=base.weight.device, dtype=torch.float32)  # adapters train in fp32 even on a bf16 base
        self.lora_A = nn.Parameter(torch.zeros(n_adapters, cfg.r, base.in_features, **p))
        self.lora_B = nn.Parameter(torch.zeros(n_adapters, base.out_features, cfg.r, **p))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self._owner = [owner]  # a list so the owner is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        owner = self._owner[0]
        for k in owner.stacked:  # frozen earlier adapters applied to every row (continual setting, 'stack' mode)
            a, b = self.lora_A[k].detach().to(x.dtype), self.lora_B[k].detach().to(x.dtype)
            y = y + self.scale * ((x @ a.t()) @ b.t())
        if owner.token_route is not None:  # a packed training pass (MultiLoRA.packed)
            return _SegmentLoRA.apply(y, self.dropout(x), self.lora_A, self.lora_B, owner.token_route,
                                      self.scale, owner.grads_in_place)
        index = owner.active_index
        if index is None:
            return y
        if owner.decode_mask is not None and x.dim() == 3 and x.shape[1] == 1 and not torch.is_grad_enabled():
            # One decoding step (inside MultiLoRA.decoding): every adapter at once, h = x [A_1; ...; A_U]^T,
            # masked to each row's own adapter (scale on its r columns, 0 elsewhere), then y += h [B_1 ... B_U]^T.
            # Two matmuls per linear whatever the number of adapters, where per-adapter slices cost ~4 small
            # ops per adapter and a per-row gather copies every row's A and B at every step; the extra FLOPs
            # (all adapters for every row) are negligible at one token per row.
            a_cat, b_cat = owner.decode_weights(self, x.dtype)
            h = (x[:, 0] @ a_cat.t()).mul_(owner.decode_mask_in(x.dtype))
            y[:, 0].addmm_(h, b_cat)
            return y
        if not torch.is_grad_enabled() and owner.segments is not None and x.dim() == 3 and x.device.type == "cpu":
            # Inference (decoding answers) on a CPU: rows come sorted by adapter, so each adapter's rows
            # are one slice; a gather would copy every row's A and B at every decoding step (measured:
            # more memory traffic than the base weights themselves at 64 rows). Not on a GPU: there the
            # ~6 kernel launches per adapter and module cost more than the gather's traffic.
            for k, lo, hi in owner.segments:
                h = x[lo:hi] @ self.lora_A[k].to(x.dtype).t()
                y[lo:hi] += self.scale * (h @ self.lora_B[k].to(x.dtype).t())
            return y
        if index.numel() == 1 and x.shape[0] != 1:
            index = index.expand(x.shape[0])
        squeeze = x.dim() == 2
        h = self.dropout(x.unsqueeze(1) if squeeze else x)
        out = _RowLoRA.apply(h, y.unsqueeze(1) if squeeze else y, self.lora_A, self.lora_B, index, self.scale,
                             owner.grads_in_place)
        return out.squeeze(1) if squeeze else out


class _RowLoRA(torch.autograd.Function):
    """y + scale * (x A_i^T) B_i^T for each batch row with its own adapter i = index[row], as one autograd node.

    The same arithmetic as gathering A and B (`index_select`), casting them to x's dtype and calling
    bmm/baddbmm under autograd, whose backward is ~8 graph nodes per wrapped linear (gathers, casts,
    transposes, two matmuls) — 210 linears in a 30-layer model, a fixed cost per forward/backward that
    dominates on short SEAL lines. Here the backward is written out: four bmm, and each adapter's
    gradient rows cast to fp32 and `index_add`ed into the stacked [K, ...] gradient."""

    @staticmethod
    def forward(ctx, x, y, lora_A, lora_B, index, scale, grads_in_place=False):
        a = lora_A.index_select(0, index).to(x.dtype)  # [B, r, in]
        b = lora_B.index_select(0, index).to(x.dtype)  # [B, out, r]
        h = torch.bmm(x, a.transpose(1, 2))  # [B, T, r]
        ctx.save_for_backward(x, a, b, h, index)
        # the parameters themselves (not saved tensors: backward only reads their .grad, never their values)
        ctx.scale, ctx.params, ctx.in_place = scale, (lora_A, lora_B), grads_in_place
        # baddbmm: y + scale * h B^T in one op (a separate scale and add cost ~4% of a CPU step)
        return torch.baddbmm(y, h, b.transpose(1, 2), alpha=scale)

    @staticmethod
    def backward(ctx, g):
        x, a, b, h, index = ctx.saved_tensors
        need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
        g_h = torch.bmm(g, b).mul_(ctx.scale)  # [B, T, r]: d loss / d h
        grad_x = torch.bmm(g_h, a) if need_x else None
        lora_A, lora_B = ctx.params
        grad_a = grad_b = None
        if need_a:
            grad_a = _add_rows(lora_A, index, torch.bmm(g_h.transpose(1, 2), x), ctx.in_place)  # rows [B, r, in]
        if need_b:
            grad_b = _add_rows(lora_B, index, torch.bmm(g.transpose(1, 2), h).mul_(ctx.scale), ctx.in_place)
        return grad_x, (g if need_y else None), grad_a, grad_b, None, None, None


# Adapters per block of a packed pass: as many as fit in this many LoRA columns (adapters * r). A block computes
# every adapter's columns for every token and masks all but the token's own, so its LoRA FLOPs are (adapters per
# block) x the useful ones; fewer adapters per block means more, smaller matmul calls. Whole training calls
# (benchmarks/train_mfu.py, docs/RESULTS.md): on the 2-core Xeon with AMX (session 8) 64, 128 and 256 ran alike;
# on the 2-core Zen 4 EPYC of session 9, whose bf16 matmul peak is ~5x lower, 64 beat 128 by ~6% and 16 and 32 were no faster.
BLOCK_COLUMNS = 64
# The same for fp32 passes (a CPU without native bf16 matmuls trains in fp32): there a skinny fp32 matmul of one
# adapter's r columns runs near the speed of a wide one, so the masked columns of a shared block are pure loss.
# On the AVX2-only 2-core Zen 3 EPYC of session 10: 16 columns (one adapter per block at r=16) trained a round's
# groups in 180 s against 201 s for 64 and 213 s for 32 (train_mfu.py --block-columns, 3-4 runs each).
FP32_BLOCK_COLUMNS = 16


def adapters_per_block(r: int, dtype: torch.dtype) -> int:
    """How many adapters share a block of a packed pass in this compute dtype (at least 1)."""
    return max(1, (FP32_BLOCK_COLUMNS if dtype == torch.float32 else BLOCK_COLUMNS) // r)


# A block of at most this many tokens x columns runs its LoRA matmuls in fp32 on a bf16 pass: a bf16 matmul
# has a fixed cost per call (oneDNN) that tiny ones never amortise, while fp32 ones of that size take a few
# microseconds (on the AMX Xeon of docs/RESULTS.md) and need no cast of the fp32 adapters; e.g. the lone
# adapter of a lockstep group's tail, one row of ~60 tokens at r=16.
SMALL_BLOCK = 2048


@dataclass
class RouteBlock:
    """Adapters `slots` (consecutive in token order) on tokens [lo, hi) of a packed pass."""

    slots: list[int]
    lo: int
    hi: int
    mask: torch.Tensor | None  # [hi - lo, len(slots) * r]: 1 where the token's adapter owns the column; None: one adapter
    index: torch.Tensor | None  # the slots as an index tensor, None when they are a contiguous range
    small: bool = False  # at most SMALL_BLOCK tokens x columns: fp32 matmuls on a bf16 pass
    _masks: dict = field(default_factory=dict)  # (dtype, scale) -> mask * scale in dtype

    def take(self, stacked: torch.Tensor) -> torch.Tensor:
        """The block's slices of a stacked [K, ...] adapter tensor (a view when the slots are a range)."""
        return stacked[self.slots[0] : self.slots[-1] + 1] if self.index is None else stacked.index_select(0, self.index)

    def add_into(self, stacked: torch.Tensor, rows: torch.Tensor) -> None:
        """stacked[slots] += rows (the inverse of take)."""
        if self.index is None:
            stacked[self.slots[0] : self.slots[-1] + 1].add_(rows)
        else:
            stacked.index_add_(0, self.index, rows.to(stacked.dtype))

    def scale_of(self, dtype: torch.dtype, scale: float):
        """What h = x A^T is multiplied by: the scale (one adapter) or the scaled mask, made once per pass."""
        if self.mask is None:
            return scale
        m = self._masks.get((dtype, scale))
        if m is None:
            m = self._masks[(dtype, scale)] = (self.mask * scale).to(dtype)
        return m


@dataclass
class TokenRoute:
    """Where the adapters of a packed pass sit (MultiLoRA.packed), built once per pass and shared by every
    wrapped linear: the adapters' token ranges, in token order, grouped into blocks of up to
    `BLOCK_COLUMNS // r` adapters. A block's LoRA is two plain matmuls over its token range against its
    adapters' A and B side by side, h = x [A_1; ...; A_G]^T and y += h [B_1 ... B_G]^T, with h masked so each
    token keeps only its own adapter's r columns: every adapter's exact update, G times its FLOPs."""

    blocks: list[RouteBlock]
    covers_all: bool  # every token of the pass belongs to some adapter

    @classmethod
    def build(cls, segments: list[tuple[int, int, int]], n_tokens: int, device, r: int,
              per_block: int | None = None) -> "TokenRoute":
        """`per_block`: adapters per block (default: adapters_per_block(r, bf16), BLOCK_COLUMNS // r)."""
        per_block = per_block or adapters_per_block(r, torch.bfloat16)
        blocks = []
        for b in range(0, len(segments), per_block):
            part = segments[b : b + per_block]
            slots, lo, hi = [k for k, _, _ in part], part[0][1], part[-1][2]
            mask = None
            if len(part) > 1:
                mask = torch.zeros(hi - lo, len(part) * r)
                for j, (_, s_lo, s_hi) in enumerate(part):
                    mask[s_lo - lo : s_hi - lo, j * r : (j + 1) * r] = 1
                mask = mask.to(device)
            contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
            index = None if contiguous else torch.tensor(slots, dtype=torch.long, device=device)
            blocks.append(RouteBlock(slots, lo, hi, mask, index, (hi - lo) * len(part) * r <= SMALL_BLOCK))
        covered = sum(hi - lo for _, lo, hi in segments)
        return cls(blocks, covered == n_tokens)


class _SegmentLoRA(torch.autograd.Function):
    """Packed sequences: y + scale * (x A_k^T) B_k^T for the tokens of each adapter k, as one autograd node.

    x and y are [1, T, features] (or [T, features]): a training step's rows concatenated, sorted by adapter,
    so each adapter's tokens are one range. Per block of adapters (`TokenRoute`): h = x[lo:hi] A^T against the
    block's A stacked, masked to each token's own adapter, then y[lo:hi] += h B^T, and the backward is four
    plain matmuls whose products are the block's stacked gradients directly. Plain matmuls, not one small
    matmul per adapter or a bmm over a gathered grid of token chunks (the layout before session 8): on the
    AMX CPU of docs/RESULTS.md the grid's rank-16 bmm ran at ~100 GFLOP/s against ~1,100 for the step's mm
    (step_profile.py), and a gather-free layout also drops the grid's index_select copies.
    y, the frozen base layer's fresh output, which no other autograd node saved, is updated in place. y is
    the first input: when it is a view (F.linear with a bias returns one for 3-D input), autograd's
    CopySlices, which rebases an in-place change of a view, takes the first input's gradient as the view's."""

    @staticmethod
    def forward(ctx, y, x, lora_A, lora_B, route: TokenRoute, scale, grads_in_place=False):
        x2, y2 = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        saved = []
        for blk in route.blocks:
            cd = _block_dtype(blk, x.dtype)
            a = blk.take(lora_A).to(cd).reshape(-1, x2.shape[1])  # [G*r, in]
            bt = blk.take(lora_B).to(cd).transpose(1, 2).reshape(-1, y2.shape[1])  # [G*r, out]
            h = (x2[blk.lo : blk.hi].to(cd) @ a.t()).mul_(blk.scale_of(cd, scale))  # [n, G*r], scaled, masked
            if cd == y.dtype:
                y2[blk.lo : blk.hi].addmm_(h, bt)
            else:
                y2[blk.lo : blk.hi].add_(h @ bt)
            saved += [a, bt, h]
        ctx.save_for_backward(x2, *saved)
        ctx.route, ctx.scale, ctx.params, ctx.in_place = route, scale, (lora_A, lora_B), grads_in_place
        ctx.x_shape = x.shape
        ctx.mark_dirty(y)
        return y

    @staticmethod
    def backward(ctx, g):
        x2, *saved = ctx.saved_tensors
        route = ctx.route
        need_y, need_x, need_a, need_b = ctx.needs_input_grad[:4]
        lora_A, lora_B = ctx.params
        g2 = g.reshape(-1, g.shape[-1])
        grad_x = None
        if need_x:
            grad_x = (torch.empty if route.covers_all else torch.zeros)(x2.shape, dtype=g.dtype, device=g.device)
        grad_a = _RowsInto(lora_A, ctx.in_place) if need_a else None
        grad_b = _RowsInto(lora_B, ctx.in_place) if need_b else None
        for i, blk in enumerate(route.blocks):
            a, bt, h = saved[3 * i : 3 * i + 3]
            cd = h.dtype
            g_blk = g2[blk.lo : blk.hi].to(cd)
            g_h = (g_blk @ bt.t()).mul_(blk.scale_of(cd, ctx.scale))  # d loss / d (x A^T), own columns only
            if need_x:
                if cd == grad_x.dtype:
                    torch.mm(g_h, a, out=grad_x[blk.lo : blk.hi])
                else:
                    grad_x[blk.lo : blk.hi] = g_h @ a
            n = len(blk.slots)
            if need_a:
                grad_a.add(blk, (g_h.t() @ x2[blk.lo : blk.hi].to(cd)).view(n, -1, x2.shape[1]))  # [G, r, in]
            if need_b:
                grad_b.add(blk, (g_blk.t() @ h).view(g2.shape[1], n, -1).transpose(0, 1))  # [G, out, r]
        return ((g if need_y else None), (grad_x.view(ctx.x_shape) if need_x else None),
                (grad_a.result() if need_a else None), (grad_b.result() if need_b else None), None, None, None)


def _block_dtype(blk: RouteBlock, dtype: torch.dtype) -> torch.dtype:
    """A small block's LoRA matmuls run in fp32 on a bf16 pass (see SMALL_BLOCK)."""
    return torch.float32 if blk.small and dtype in (torch.bfloat16, torch.float16) else dtype


class _RowsInto:
    """The [K, ...] gradient of a stacked adapter parameter, accumulated block by block (see _add_rows)."""

    def __init__(self, param: nn.Parameter, in_place: bool):
        self.in_place = in_place and param.grad is not None
        self.grad = param.grad if self.in_place else torch.zeros_like(param)

    def add(self, blk: RouteBlock, rows: torch.Tensor) -> None:
        blk.add_into(self.grad, rows)

    def result(self) -> torch.Tensor | None:
        return None if self.in_place else self.grad


def _add_rows(param: nn.Parameter, index: torch.Tensor, rows: torch.Tensor, in_place: bool) -> torch.Tensor | None:
    """The [K, ...] gradient of a stacked adapter parameter from its per-row gradient rows.

    With `in_place` (set by Engine.train for its own backward passes: MultiLoRA.grads_in_place) an existing
    .grad — a later length group of the step; BatchedAdamW.zero_grad zeroes only the slices it used — is
    added to in place, so a step allocates and zero-fills no [K, ...] gradient. That bypasses autograd, so
    it is off for everyone else (`torch.autograd.grad`, `backward(inputs=...)` see the gradient as usual)."""
    if in_place and param.grad is not None:
        param.grad.index_add_(0, index, rows.to(param.grad.dtype))
        return None
    return torch.zeros_like(param).index_add_(0, index, rows.to(param.dtype))


class MultiLoRA:
    """Attach K adapters to every target linear of `model`; select per row with `use(index)`."""

    def __init__(self, model: nn.Module, n_adapters: int, cfg: LoRAConfig | None = None):
        self.model = model
        self.cfg = cfg or LoRAConfig()
        self.n_adapters = n_adapters
        self.active_index: torch.Tensor | None = None
        self.segments: list[tuple[int, int, int]] | None = None  # (slot, first row, end row) when sorted
        self.noop_slots: set[int] = set()  # slots known to be all-zero (B = 0): skipped when decoding
        self.stacked: list[int] = []  # slots added to every row, on top of the per-row adapter
        self.token_route: TokenRoute | None = None  # set by packed()
        self.grads_in_place = False  # backward adds adapter gradients into .grad directly (Engine.train only)
        self.decode_slots: list[int] = []  # adapters of the current decoding() call
        self.decode_mask: torch.Tensor | None = None  # [rows, len(decode_slots) * r], set by use() while decoding
        self._decode_masks: dict[torch.dtype, torch.Tensor] = {}  # decode_mask cast once per dtype
        self._decode_weights: dict[tuple, tuple] = {}  # (id(wrapper), dtype) -> (A stacked, B^T stacked, versions)
        self.modules: list[tuple[str, MultiLoRALinear]] = []
        self.mirrors: list[dict[str, MultiLoRALinear]] = []  # wrappers of copies made by mirror()
        for p in model.parameters():
            p.requires_grad_(False)
        targets = set(self.cfg.target_modules)
        for module in list(model.modules()):  # a model may come from an earlier engine: unwrap it first
            for child_name, child in list(module.named_children()):
                if isinstance(child, MultiLoRALinear):
                    setattr(module, child_name, child.base)
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and child_name in targets:
                    wrapped = MultiLoRALinear(child, n_adapters, self.cfg, self)
                    setattr(module, child_name, wrapped)
                    self.modules.append((f"{name}.{child_name}" if name else child_name, wrapped))
        if not self.modules:
            raise ValueError(f"no nn.Linear named any of {sorted(targets)} in the model")

    # -- parameters -------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [p for _, m in self.modules for p in (m.lora_A, m.lora_B)]

    @torch.no_grad()
    def reset(self, seeds: list[int] | None = None, adapters: list[int] | None = None) -> None:
        """Fresh adapters: A ~ kaiming-uniform (as peft), B = 0, so every adapter starts as a no-op.

        Adapter k's A is drawn from its own generator seeded by seeds[k], so adapter k gets the same
        initial weights whether K=1 or K=8 adapters are attached."""
        adapters = list(range(self.n_adapters)) if adapters is None else adapters
        seeds = seeds if seeds is not None else adapters
        for k, seed in zip(adapters, seeds, strict=True):
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            for _, m in self.modules:
                fan_in = m.lora_A.shape[2]
                bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) as in nn.Linear / peft
                a = torch.rand(m.lora_A.shape[1:], generator=gen) * 2 * bound - bound
                m.lora_A[k].copy_(a)
                m.lora_B[k].zero_()

    @contextmanager
    def use(self, index: torch.Tensor | list[int] | int | None):
        """Route batch row b through adapter index[b] (an int: every row; None: the bare base model)."""
        prev = self.active_index, self.segments
        if isinstance(index, int):
            index = [index]
        if isinstance(index, list):
            index = torch.tensor(index, dtype=torch.long)
        dev = self.modules[0][1].lora_A.device
        rows = index.tolist() if index is not None else None
        self.active_index = index.to(dev) if index is not None else None
        self.segments = _segments(rows, self.noop_slots) if rows is not None else None
        prev_mask = self.decode_mask, self._decode_masks
        self.decode_mask, self._decode_masks = None, {}
        pos = {s: i for i, s in enumerate(self.decode_slots)}
        # Only inside decoding(), and only if every row's adapter is one of its slots (or all-zero): a row
        # whose adapter was not stacked would otherwise silently decode with none.
        if rows is not None and pos and all(k in pos or k in self.noop_slots for k in rows):
            row_pos = torch.tensor([pos.get(k, -1) for k in rows], device=dev)
            col_pos = torch.arange(len(pos) * self.cfg.r, device=dev) // self.cfg.r
            # one row per batch row (one index for the whole batch: a [1, U*r] mask, broadcast)
            self.decode_mask = (row_pos[:, None] == col_pos[None, :]).float() * self.cfg.scale
        try:
            yield
        finally:
            self.active_index, self.segments = prev
            self.decode_mask, self._decode_masks = prev_mask

    @contextmanager
    def packed(self, segments: list[tuple[int, int, int]], n_tokens: int, dtype: torch.dtype = torch.float32):
        """A training pass over packed sequences of `n_tokens` tokens in all: tokens [lo, hi) of the (flattened)
        batch use adapter k, for each (k, lo, hi) in `segments` (disjoint ranges, one per adapter, in token
        order). Tokens in no range get no adapter. `dtype`: the pass's compute dtype (sets adapters_per_block)."""
        ks = [k for k, _, _ in segments]
        ends = [e for _, lo, hi in segments for e in (lo, hi)]
        if len(set(ks)) != len(ks) or any(not 0 <= k < self.n_adapters for k in ks) or not segments \
                or ends != sorted(ends) or ends[0] < 0 or ends[-1] > n_tokens or any(lo >= hi for _, lo, hi in segments):
            raise ValueError(f"packed(): need non-empty ordered token ranges in [0, {n_tokens}) of distinct "
                             f"adapters in [0, {self.n_adapters}), got {segments}")
        prev = self.token_route
        self.token_route = TokenRoute.build(segments, n_tokens, self.modules[0][1].lora_A.device, self.cfg.r,
                                            adapters_per_block(self.cfg.r, dtype))
        try:
            yield
        finally:
            self.token_route = prev

    @contextmanager
    def decoding(self, slots: list[int]):
        """While decoding with adapters `slots`, one-token steps apply all of them with two matmuls per wrapped
        linear (MultiLoRALinear.forward), over the slots' A and B stacked (and cast) on first use; the copies
        live until the block ends. Rows whose adapter is not in `slots` make use() fall back to the regular path."""
        prev = self.decode_slots, self._decode_weights, self.decode_mask, self._decode_masks
        self.decode_slots = sorted({int(s) for s in slots} - self.noop_slots)
        self._decode_weights, self.decode_mask, self._decode_masks = {}, None, {}  # an outer block's mask is not ours
        try:
            yield
        finally:
            self.decode_slots, self._decode_weights, self.decode_mask, self._decode_masks = prev

    def decode_mask_in(self, dtype: torch.dtype) -> torch.Tensor:
        mask = self._decode_masks.get(dtype)
        if mask is None:
            mask = self._decode_masks[dtype] = self.decode_mask.to(dtype)
        return mask

    def decode_weights(self, m: "MultiLoRALinear", dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[U*r, in] and [U*r, out]: the decoding slots' A and B^T of wrapper `m`, stacked, in `dtype`."""
        # rebuilt when an adapter was changed in place inside the block (an optimizer step, a reset): the
        # parameters' version counters are part of the cache entry
        version = (m.lora_A._version, m.lora_B._version)
        hit = self._decode_weights.get((id(m), dtype))
        if hit is not None and hit[2] == version:
            return hit[0], hit[1]
        s = self.decode_slots
        w = (m.lora_A.detach()[s].reshape(len(s) * self.cfg.r, -1).to(dtype),
             m.lora_B.detach()[s].transpose(1, 2).reshape(len(s) * self.cfg.r, -1).to(dtype))
        self._decode_weights[(id(m), dtype)] = (*w, version)
        return w

    def adapter_state(self, k: int) -> dict[str, torch.Tensor]:
        """Adapter k in peft's key layout (`base_model.model.<module>.lora_A.weight`)."""
        out = {}
        for name, m in self.modules:
            out[f"base_model.model.{name}.lora_A.weight"] = m.lora_A[k].detach().clone()
            out[f"base_model.model.{name}.lora_B.weight"] = m.lora_B[k].detach().clone()
        return out

    @torch.no_grad()
    def load_adapter_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        for name, m in self.modules:
            m.lora_A[k].copy_(state[f"base_model.model.{name}.lora_A.weight"])
            m.lora_B[k].copy_(state[f"base_model.model.{name}.lora_B.weight"])

    def save_peft(self, k: int, out_dir: str | Path, base_model_name: str = "") -> Path:
        """Write adapter k as a peft adapter directory (loadable with PeftModel.from_pretrained)."""
        import json

        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({n: t.contiguous() for n, t in self.adapter_state(k).items()}, out_dir / "adapter_model.safetensors")
        (out_dir / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.cfg.r, "lora_alpha": self.cfg.alpha,
            "lora_dropout": self.cfg.dropout, "target_modules": sorted(self.cfg.target_modules),
            "bias": "none", "base_model_name_or_path": base_model_name, "fan_in_fan_out": False,
            "inference_mode": True,
        }, indent=2))
        return out_dir

    @torch.no_grad()
    def mirror(self, dtype: torch.dtype) -> nn.Module:
        """A copy of the model with its frozen weights in `dtype` whose wrappers share THIS object's
        adapter parameters and routing (`use`, `stacked`): a forward/backward on the copy trains the
        same fp32 adapters. Used to run training passes in bf16 while decoding stays in fp32.
        `merge_into_base` and `load_base_weights` keep the copy's base weights in step."""
        memo: dict[int, object] = {id(self): self}  # deepcopy must share, not copy, owner and adapters
        for _, m in self.modules:
            for shared in (m.lora_A, m.lora_B, m._owner):
                memo[id(shared)] = shared
        twin = copy.deepcopy(self.model, memo)
        adapters = {id(p) for p in self.parameters()}
        for p in twin.parameters():
            if id(p) not in adapters and p.is_floating_point():
                p.data = p.data.to(dtype)
        self.mirrors.append({name: twin.get_submodule(name) for name, _ in self.modules})
        return twin

    @torch.no_grad()
    def merge_into_base(self, k: int) -> None:
        """Fold adapter k into the base weights (W += scale * B A) and zero it. Changes the base!"""
        for name, m in self.modules:
            w = m.base.weight
            w.add_((m.scale * (m.lora_B[k] @ m.lora_A[k])).to(w.dtype))
            for twin in self.mirrors:
                twin[name].base.weight.copy_(w)
            m.lora_B[k].zero_()

    @torch.no_grad()
    def load_base_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Overwrite the wrapped linears' base weights ({module name: weight}), mirrors included."""
        for name, m in self.modules:
            m.base.weight.copy_(weights[name])
            for twin in self.mirrors:
                twin[name].base.weight.copy_(weights[name])

    def detach(self) -> nn.Module:
        """Remove the wrappers, returning the model with its original nn.Linear modules."""
        for name, m in self.modules:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, m.base)
        self.modules = []
        return self.model


def _segments(index: list[int], noop: set[int]) -> list[tuple[int, int, int]] | None:
    """(slot, lo, hi) runs of equal slots when every slot's rows are contiguous; None otherwise.
    A single slot covers every row of any batch (`use(k)`)."""
    if len(index) == 1:
        return [] if index[0] in noop else [(index[0], 0, 1 << 62)]
    runs: list[tuple[int, int, int]] = []
    for row, k in enumerate(index):
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1], row + 1)
        else:
            runs.append((k, row, row + 1))
    if len({k for k, _, _ in runs}) != len(runs):
        return None
    return [r for r in runs if r[0] not in noop]


@dataclass
class BatchedAdamW:
    """AdamW over stacked per-adapter parameters [K, ...], with per-adapter lr, step and activity.

    torch.optim.AdamW cannot give slices of one tensor different learning rates or skip slices whose
    adapter has finished its epochs (momentum would keep moving them), which batched SEAL needs:
    ARC recipes choose their own learning rate and epochs."""

    params: list[nn.Parameter]
    n_adapters: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    state: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    steps: torch.Tensor | None = None

    def __post_init__(self):
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.steps = torch.zeros(self.n_adapters, dtype=torch.long)

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor) -> None:
        """lr: [K] learning rates for this step; active: [K] bool, adapters that had data this step.

        Adapters that share (learning rate, step count) — in lockstep training, usually all active ones —
        are updated together with in-place `_foreach` ops on a slice of each stacked tensor (a gathered
        copy, written back, when they are not a contiguous range). Inactive adapters are not touched, and
        no [K, ...]-sized temporaries are built: the update is memory-bound, so this is what it costs."""
        self.steps += active.long()
        b1, b2 = self.betas
        sets: dict[tuple[float, int], list[int]] = {}
        for k in active.nonzero().flatten().tolist():
            sets.setdefault((float(lr[k]), int(self.steps[k])), []).append(k)
        live = [(p, m, v) for p, (m, v) in zip(self.params, self.state) if p.grad is not None]
        if not live:
            return
        for (lr_k, t), ks in sets.items():
            lo, hi = ks[0], ks[-1] + 1
            index = None if ks == list(range(lo, hi)) else torch.tensor(ks, device=self.params[0].device)
            take = (lambda x: x[lo:hi]) if index is None else (lambda x: x.index_select(0, index))  # noqa: E731
            ps, gs, ms, vs = ([take(x) for x in xs] for xs in zip(*((p, p.grad, m, v) for p, m, v in live)))
            # (the CPU kernel ignores strides: fused only when every tensor is laid out like its parameter)
            if ps[0].device.type in ("cpu", "cuda") and all(t.is_contiguous() for t in (*ps, *gs, *ms, *vs)):
                # one fused pass over p, grad, m, v (the step is memory-bound; the _foreach sequence below
                # reads and writes them ~8 times). Same update as torch.optim.AdamW(fused=True).
                step = torch.tensor(float(t), dtype=torch.float32, device=ps[0].device)  # the kernel reads fp32
                torch._fused_adamw_(ps, gs, ms, vs, [], [step] * len(ps), lr=lr_k, beta1=b1, beta2=b2,
                                    weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)
            else:
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                torch._foreach_mul_(ms, b1)
                torch._foreach_add_(ms, gs, alpha=1 - b1)
                torch._foreach_mul_(vs, b2)
                torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
                denom = torch._foreach_sqrt(vs)
                torch._foreach_div_(denom, math.sqrt(bc2))
                torch._foreach_add_(denom, self.eps)
                if self.weight_decay:  # decoupled: p -= lr * wd * p
                    torch._foreach_mul_(ps, 1 - lr_k * self.weight_decay)
                torch._foreach_addcdiv_(ps, ms, denom, value=-lr_k / bc1)
            if index is not None:  # gathered copies: write them back
                for (p, m, v), pk, mk, vk in zip(live, ps, ms, vs):
                    p.index_copy_(0, index, pk)
                    m.index_copy_(0, index, mk)
                    v.index_copy_(0, index, vk)

    def zero_grad(self, active: torch.Tensor | None = None) -> None:
        """Drop the gradients, or (active: the [K] mask of the step) zero in place the slices of the
        adapters that had data, the only ones a step writes: the next step then reuses the buffers."""
        if active is None:
            for p in self.params:
                p.grad = None
            return
        lo, hi = _active_range(active)
        for p in self.params:
            if p.grad is not None:
                p.grad[lo:hi].zero_()


def _active_range(active: torch.Tensor) -> tuple[int, int]:
    """The smallest slot range [lo, hi) that holds every active adapter (slots between them that were
    inactive have zero gradients, so they may be included)."""
    ks = active.nonzero().flatten()
    return (int(ks[0]), int(ks[-1]) + 1) if len(ks) else (0, 0)


def clip_grad_norm_per_adapter(params: list[nn.Parameter], max_norm: float, n_adapters: int,
                               active: torch.Tensor | None = None) -> torch.Tensor:
    """Clip each adapter's gradient to max_norm over all its slices (what clipping it alone would do).
    With `active` (the [K] mask of the step) only the slot range holding the active adapters is read:
    the others have no gradient this step. Returns the [K] norms before clipping."""
    lo, hi = _active_range(active) if active is not None else (0, n_adapters)
    norms = torch.zeros(n_adapters, device=params[0].device)
    grads = [p.grad[lo:hi] for p in params if p.grad is not None]
    if not grads or hi == lo:
        return norms
    # one norm op per parameter (not per slice): [params, adapters] partial norms, combined per adapter
    partial = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=torch.float32) for g in grads])
    norms[lo:hi] = partial.pow(2).sum(0).sqrt()
    factor = (max_norm / (norms[lo:hi] + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view((-1,) + (1,) * (g.dim() - 1)).to(g.dtype))
    return norms
