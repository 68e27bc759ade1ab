"""The model with K adapter slots: batched generation and batched LoRA training, no reloads.

One `Engine` holds the base model for a whole run. `train(plans)` fits one fresh adapter per plan,
all in the same forward/backward passes (see lora.py); `generate(prompts, adapters=...)` decodes a
batch in which each row may use a different adapter (or none). Between groups of self-edits the
adapters are reset in memory; the base weights are never touched.
"""

from __future__ import annotations

import inspect
import random
import time
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .linear_ce import capped_cross_entropy, linear_cross_entropy
from .lora import BatchedAdamW, LoRAConfig, MultiLoRA, clip_grad_norm_per_adapter
from .models import DTYPES, LoadedModel
from .norms import fuse_rms_norms


def _check_compute_dtype(name: str, field: str) -> None:
    if name != "auto" and DTYPES.get(name) not in (torch.float32, torch.bfloat16):
        raise ValueError(f"{field} must be auto, float32 or bfloat16, got {name!r}")


@dataclass
class TrainConfig:
    """How each inner-loop adapter is trained (paper defaults: lr 1e-3, 10 epochs)."""

    learning_rate: float = 1e-3
    """Adam learning rate, unless a plan (e.g. an ARC recipe) sets its own."""
    epochs: int = 10
    """Passes over the plan's sequences, unless the plan sets its own."""
    batch_size: int = 1
    """Sequences per adapter per optimizer step."""
    max_seq_len: int = 512
    """Longer sequences are truncated (on the right)."""
    lr_schedule: str = "constant"
    """'constant' or 'linear' (decay to 0 over the adapter's own steps, as HF Trainer's default)."""
    grad_clip: float = 1.0
    """Per-adapter gradient-norm clip; 0 disables."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    compute_dtype: str = "auto"
    """Dtype of the training forward/backward: auto, float32 or bfloat16. auto = bfloat16 for an fp32
    model on a CPU with native bf16 matmuls (AVX512-BF16 or AMX: 4.6x the fp32 matmul peak on the 2-core
    EPYC of docs/RESULTS.md), else the model's own dtype. When it differs from the model's dtype, a copy
    of the frozen base weights in this dtype runs the training passes; adapters and optimizer state stay
    in fp32. Decoding has its own setting, GenerationConfig.compute_dtype."""
    batching: str = "auto"
    """How a step's sequences (K adapters x batch_size) go through the model: 'packed' = concatenated into
    one row with no padding (each sequence attends only to itself; every matmul sees all the step's
    tokens at once), 'padded' = rows of similar length padded into up to 4 batches on a CPU, 1 on a GPU
    (one pass per step: a small model on a GPU is bound by kernel launches, which packing's per-sequence
    attention would multiply). auto = packed for a model on a CPU with sdpa attention (the default),
    padded otherwise. Same losses and gradients up to float rounding (tested for Llama, Qwen2's biased
    projections and Mistral's sliding window)."""

    def __post_init__(self):
        _check_compute_dtype(self.compute_dtype, "train.compute_dtype")
        if self.batching not in ("auto", "packed", "padded"):
            raise ValueError(f"train.batching must be auto, packed or padded, got {self.batching!r}")


@dataclass
class GenerationConfig:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    batch_size: int = 16
    """Prompts decoded together (rows of one generate call)."""
    backend: str = "hf"
    """Self-edit sampling backend: hf (this engine) or vllm (GPU, `pip install vllm`; see vllm_sampler.py).
    Decoding with trained adapters (answers) always uses this engine."""
    compute_dtype: str = "auto"
    """Dtype of decoding in this engine: auto, float32 or bfloat16, chosen as TrainConfig.compute_dtype
    (auto = bfloat16 for an fp32 model on a CPU with native bf16 matmuls, through the same bf16 copy of
    the base weights that runs the training passes; else the model's dtype). On the 2-core EPYC of
    docs/RESULTS.md bf16 decodes 1.6-2x faster; the paper decodes in bf16 too (vLLM on GPUs)."""

    def __post_init__(self):
        _check_compute_dtype(self.compute_dtype, "generation.compute_dtype")


@dataclass
class TrainPlan:
    """What one adapter is trained on: (prompt, completion) pairs, loss on completion tokens only."""

    examples: list[tuple[str, str]]
    learning_rate: float | None = None
    epochs: int | None = None
    seed: int = 0


@dataclass
class TrainStats:
    losses: list[list[float]] = field(default_factory=list)  # per adapter, per step
    tokens: int = 0  # real (non-pad) tokens processed in forward passes
    padded_tokens: int = 0  # tokens computed, padding included
    trained_tokens: int = 0  # tokens that carried loss
    steps: int = 0
    seconds: float = 0.0


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bf16 matmuls several times faster than fp32 (elsewhere, slower)."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no capability query, assume none
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_compute_dtype(name: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cpu" and model_dtype == torch.float32 and cpu_has_native_bf16():
            return torch.bfloat16
        return model_dtype
    _check_compute_dtype(name, "compute_dtype")
    return DTYPES[name]


def _cpu_sdpa(module, query, key, value, attention_mask, seal_seq_lengths=None, **kwargs):
    """transformers' SDPA attention with two changes for training passes on a CPU.

    - Packed sequences (Engine.train): `seal_seq_lengths` gives the lengths of the sequences concatenated
      along the one batch row, and each runs as its own causal SDPA (with the model's sliding window, if
      it has one, as an explicit mask). transformers' [T, T] block mask
      (built from the restarting position ids) is not used: one masked SDPA over all T tokens would
      compute T^2 scores where only the sum of L^2 are needed.
    - bf16 upcast to fp32 while training: PyTorch's CPU flash attention backward is ~2x slower in bf16
      than in fp32 (measured on the 2-core EPYC: 1.6 vs 0.8 s of a 10 s training call); decoding, which
      has no backward, stays in bf16."""
    upcast = torch.is_grad_enabled() and query.dtype == torch.bfloat16
    if upcast:
        query, key, value = query.float(), key.float(), value.float()
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
    if seal_seq_lengths is None:
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    else:
        # split (not slicing in a loop): its backward writes the gradients with one cat, where each slice's
        # backward would zero-fill a full-size [1, heads, T, dim] gradient
        parts = zip(*(t.split(seal_seq_lengths, dim=2) for t in (query, key, value)))
        window = kwargs.get("sliding_window")  # Mistral, Qwen2 with use_sliding_window, ...: i - j < window
        out = torch.cat([sdpa_attention_forward(module, q, k, v, _window_mask(q.shape[2], window, q.device), **kwargs)[0]
                         for q, k, v in parts], dim=1)
        weights = None
    return (out.to(torch.bfloat16) if upcast else out), weights


def _window_mask(length: int, window: int | None, device) -> torch.Tensor | None:
    """None (plain causal attention) unless a sliding window cuts into a sequence of this length; then the
    [1, 1, L, L] boolean mask of causal attention to the last `window` positions."""
    if not window or length <= window:
        return None
    i = torch.arange(length, device=device)
    return ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window))[None, None]


_CPU_SDPA = "seal_cpu_sdpa"
AttentionInterface.register(_CPU_SDPA, _cpu_sdpa)
# transformers builds attention masks only for implementations with a registered mask function; without
# this line padded rows would attend to padding
AttentionMaskInterface.register(_CPU_SDPA, sdpa_mask)


class Engine:
    """A loaded model with `n_slots` LoRA adapters attached."""

    def __init__(self, loaded: LoadedModel, n_slots: int, lora: LoRAConfig | None = None):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        # One extra slot stays at B = 0 forever: rows that want the bare base model use it, so a
        # single generate batch can mix adapted and unadapted rows.
        self.lora = MultiLoRA(self.model, n_slots + 1, lora or LoRAConfig())
        self.lora.reset()
        self.n_slots = n_slots
        self.base_slot = n_slots
        self.lora.noop_slots = {self.base_slot}
        bos = self.tokenizer.bos_token_id
        self._adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]
        self._cpu_kernels(self.model)
        self._train_models: dict[torch.dtype, torch.nn.Module] = {}

    def _cpu_kernels(self, model) -> None:
        """On a CPU: the packed-sequence attention (_cpu_sdpa) and one-node RMSNorms (norms.py)."""
        if self.device.type != "cpu":
            return
        if getattr(model.config, "_attn_implementation", None) == "sdpa":
            model.set_attn_implementation(_CPU_SDPA)
        fuse_rms_norms(model)

    def compute_model(self, compute_dtype: str = "auto") -> torch.nn.Module:
        """The model that runs training passes or decodes: this one, or (made once) a copy of its frozen
        weights in the compute dtype that shares the adapters (TrainConfig / GenerationConfig.compute_dtype)."""
        model_dtype = next(self.model.parameters()).dtype
        dtype = resolve_compute_dtype(compute_dtype, model_dtype, self.device)
        if dtype == model_dtype:
            return self.model
        if dtype not in self._train_models:
            twin = self.lora.mirror(dtype)
            self._cpu_kernels(twin)
            self._train_models[dtype] = twin
        return self._train_models[dtype]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ tokenization
    def encode_example(self, prompt: str, completion: str, max_len: int) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 on prompt tokens) of one training example."""
        p_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        first = p_ids or c_ids
        if self._adds_bos and first and first[0] != bos:
            # Models whose tokenizer adds BOS (Llama, Gemma) saw it first in every pretraining sequence;
            # a chat-template prompt already has it, a raw training line does not.
            p_ids = [bos] + p_ids
        ids = (p_ids + c_ids)[:max_len]
        labels = ([-100] * len(p_ids) + c_ids)[:max_len]
        return ids, labels

    # ------------------------------------------------------------------ training
    def train(self, plans: list[TrainPlan], cfg: TrainConfig, progress: bool = True,
              slots: list[int] | None = None) -> TrainStats:
        """Fit adapter slots[k] (default: slot k) on plans[k], fresh init from plans[k].seed; all
        plans in lockstep. Other slots are left as they are.

        Each step takes the next minibatch of every adapter that still has steps left; adapters with
        fewer steps simply drop out of later batches (and their optimizer state stops moving)."""
        slots = list(range(len(plans))) if slots is None else list(slots)
        if len(slots) != len(plans) or len(set(slots)) != len(slots) or any(not 0 <= s < self.n_slots for s in slots):
            raise ValueError(f"{len(plans)} plans need distinct slots in [0, {self.n_slots}); got {slots}")
        k_n = len(plans)
        self.lora.reset(seeds=[p.seed for p in plans], adapters=slots)
        encoded = [[self.encode_example(p, c, cfg.max_seq_len) for p, c in plan.examples] for plan in plans]
        # Each adapter's minibatch schedule: epoch-wise shuffles from its own seed, so the order is the
        # same whether it trains alone or beside others.
        schedules: list[list[list[int]]] = []
        lrs: list[float] = []
        for plan, enc in zip(plans, encoded):
            rng = random.Random(plan.seed)
            sched = []
            for _ in range(plan.epochs if plan.epochs is not None else cfg.epochs):
                order = [i for i in range(len(enc)) if any(l != -100 for l in enc[i][1])]
                rng.shuffle(order)
                sched += [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            schedules.append(sched)
            lrs.append(plan.learning_rate if plan.learning_rate is not None else cfg.learning_rate)

        params = self.lora.parameters()
        for p in params:
            p.requires_grad_(True)
        opt = BatchedAdamW(params, self.lora.n_adapters, weight_decay=cfg.weight_decay)
        stats = TrainStats(losses=[[] for _ in plans])
        n_steps = max((len(s) for s in schedules), default=0)
        pad = self.tokenizer.pad_token_id
        dev = self.device
        model = self.compute_model(cfg.compute_dtype)
        compute_dtype = resolve_compute_dtype(cfg.compute_dtype, next(self.model.parameters()).dtype, dev)
        # A CPU computes every padded token, so rows of very different lengths run as separate passes.
        # A GPU running a small model is bound by kernel launches, not FLOPs: each extra pass costs far
        # more than the padding it saves (measured on an H100, see docs/RESULTS.md), so one pass per step.
        max_groups = 4 if dev.type == "cpu" else 1
        packed = cfg.batching == "packed" or (
            cfg.batching == "auto" and getattr(model.config, "_attn_implementation", None) == _CPU_SDPA)
        t0 = time.perf_counter()
        model.train()
        bar = tqdm(total=n_steps, desc=f"train {k_n} adapter(s)", disable=not progress, leave=False)
        self.lora.grads_in_place = True
        try:
            for step in range(n_steps):
                rows, row_adapter = [], []
                for k, sched in enumerate(schedules):
                    if step < len(sched):
                        for i in sched[step]:
                            rows.append(encoded[k][i])
                            row_adapter.append(k)
                if not rows:
                    break
                # Each adapter's loss is the mean over ALL its label tokens of this step, so the rows
                # may be run in several passes (length groups) with exactly the same gradients.
                counts = torch.zeros(k_n)
                for (ids, lab), k in zip(rows, row_adapter):
                    counts[k] += sum(1 for t in lab[1:] if t != -100)
                loss_sums = torch.zeros(k_n)
                passes = [sorted(range(len(rows)), key=lambda r: slots[row_adapter[r]])] if packed else \
                    length_groups([len(ids) for ids, _ in rows], max_groups=max_groups)
                for group in passes:
                    g_rows = [rows[r] for r in group]
                    batch = _packed_batch(g_rows) if packed else _padded_batch(g_rows, pad)
                    stats.tokens += sum(len(ids) for ids, _ in g_rows)
                    stats.padded_tokens += batch["input_ids"].numel()
                    stats.trained_tokens += int((batch["targets"] != -100).sum())
                    plan_of_row = [row_adapter[r] for r in group]
                    if packed:  # rows sorted by slot: each adapter's tokens are one range
                        lengths = batch["seal_seq_lengths"]
                        plan_of_pos = torch.repeat_interleave(torch.tensor(plan_of_row), torch.tensor(lengths))[None]
                        route = self.lora.packed(_token_ranges([slots[k] for k in plan_of_row], lengths), sum(lengths),
                                                 compute_dtype)
                    else:
                        plan_of_pos = torch.tensor(plan_of_row)[:, None].expand_as(batch["input_ids"])
                        route = self.lora.use(torch.tensor([slots[k] for k in plan_of_row]))
                    with route:
                        sums = self._per_adapter_loss_sums(model, batch, plan_of_pos.to(dev), k_n)
                    # adapter k only sees the gradient of its own (token-mean) loss
                    (sums / counts.to(sums.device).clamp(min=1)).sum().backward()
                    loss_sums += sums.detach().float().cpu()
                per_adapter = loss_sums / counts.clamp(min=1)
                slot_of_row = torch.tensor([slots[k] for k in row_adapter], dtype=torch.long)
                active = torch.zeros(self.lora.n_adapters, dtype=torch.bool)
                active[slot_of_row.unique()] = True
                if cfg.grad_clip > 0:
                    clip_grad_norm_per_adapter(params, cfg.grad_clip, self.lora.n_adapters, active)
                lr_now = torch.zeros(self.lora.n_adapters)
                for k in range(k_n):
                    total = len(schedules[k])
                    frac = 1.0 if cfg.lr_schedule == "constant" else max(0.0, 1.0 - step / max(total, 1))
                    lr_now[slots[k]] = lrs[k] * frac
                opt.step(lr_now, active)
                opt.zero_grad(active)
                for k in range(k_n):
                    if active[slots[k]]:
                        stats.losses[k].append(float(per_adapter[k]))
                stats.steps += 1
                bar.update(1)
        finally:
            self.lora.grads_in_place = False
            bar.close()
            model.eval()
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        stats.seconds = time.perf_counter() - t0
        return stats

    @staticmethod
    def _per_adapter_loss_sums(model, batch: dict, plan_of_pos: torch.Tensor, k_n: int) -> torch.Tensor:
        """Summed next-token loss of each plan's tokens (plan_of_pos: the plan index of every position).
        `batch` holds the model inputs plus `targets`, the label each position predicts (-100: none).
        The LM head runs only on positions that carry a target (the vocabulary projection is ~20% of a
        small model's FLOPs; padding and prompt positions would waste it)."""
        inputs = {k: v.to(plan_of_pos.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        targets = inputs.pop("targets")
        decoder = getattr(model, model.base_model_prefix)
        # use_cache=False: by default (config.use_cache) the decoder would also build a KV cache and copy
        # every layer's keys and values into it, for a training pass that never decodes.
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
        mask = targets != -100
        h = hidden[mask]
        head = model.get_output_embeddings()
        # e.g. Gemma-2: the model's own forward caps logits before the loss; so must we
        cap = getattr(model.config, "final_logit_softcapping", None)
        if isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad:
            tok_loss = linear_cross_entropy(h, head.weight, targets[mask], softcap=cap)
        else:
            tok_loss = capped_cross_entropy(head(h), targets[mask], cap)
        return torch.zeros(k_n, device=tok_loss.device).index_add(0, plan_of_pos[mask], tok_loss)

    # ------------------------------------------------------------------ generation
    @property
    def end_token_ids(self) -> set[int]:
        """Every end token the model declares (e.g. Llama-3's <|eot_id|>), not only the tokenizer's."""
        ge = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        ids = {*ge} if isinstance(ge, list) else {ge} if ge is not None else set()
        return ids | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    def constraint(self, strings: list[str]) -> "TokenTrie":
        """A decoding constraint to exactly `strings` (each followed by an end token)."""
        return TokenTrie(self.tokenizer, strings, sorted(self.end_token_ids))

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        cfg: GenerationConfig,
        adapters: list[int | None] | None = None,
        seed: int = 0,
        progress: bool = False,
        desc: str = "generate",
        constraint: "TokenTrie | None" = None,
    ) -> tuple[list[str], int]:
        """Decode `prompts` (already formatted, e.g. with the chat template) in batches.

        adapters[i] is the slot used for prompt i (None: the bare base model). Rows are grouped by
        length so padding stays small. With `constraint`, every row is one of the constraint's strings,
        sampled from the model's own distribution restricted to them (see TokenTrie).
        Returns (texts, number of generated tokens)."""
        adapters = adapters if adapters is not None else [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        n_tokens = 0
        eos_ids = self.end_token_ids
        model = self.compute_model(cfg.compute_dtype)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        # Within a batch (padded to its longest prompt anyway) rows go by adapter, so each adapter's rows
        # form one slice and the LoRA runs once per adapter instead of gathering weights per row.
        slot_of = lambda i: -1 if adapters[i] is None else adapters[i]  # noqa: E731
        batches = [sorted(b, key=lambda i: (slot_of(i), len(prompts[i]))) for b in batches]
        for b, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
            enc = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            rows = [adapters[i] for i in batch]
            index = None if all(a is None for a in rows) else torch.tensor(
                [a if a is not None else self.base_slot for a in rows], dtype=torch.long)
            torch.manual_seed(seed * 1_000_003 + b)
            new = self._decode(enc["input_ids"], enc["attention_mask"], index, cfg, eos_ids, constraint, model)
            for row, i in enumerate(batch):
                n_tokens += len(new[row])
                out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
        return out, n_tokens

    @torch.no_grad()
    def _decode(self, input_ids, attention_mask, index, cfg: GenerationConfig, eos_ids: set[int],
                constraint: "TokenTrie | None" = None, model: torch.nn.Module | None = None) -> list[list[int]]:
        """New tokens of each (left-padded) row, end token excluded. What HF `generate` does for greedy
        and temperature/top-p sampling, minus three costs that dominate on a CPU (measured: a profiled
        self-edit sampling call (16 rows) spent ~10% of its time in the KV cache's torch.cat, ~5% in
        torch.multinomial's full-vocabulary exponential draw, and ran every row until the longest ended):
        the cache appends in place (`_AppendLayer`), sampling inverts the nucleus' CDF, and finished rows
        leave the batch (the cache is compacted once a quarter of the rows are done). The model's own
        generation_config contributes its top_k and repetition_penalty, as in `generate` (e.g. Qwen2.5-Instruct
        sets 1.05); other logits processors a generation_config may ask for are not applied, with a warning."""
        model = model if model is not None else self.model
        gen_cfg = self.model.generation_config  # the model's own settings (a bf16 twin holds a copy made once)
        top_k = getattr(gen_cfg, "top_k", None) if gen_cfg is not None else None
        penalty = getattr(gen_cfg, "repetition_penalty", None) if gen_cfg is not None else None
        penalty = penalty if penalty and penalty != 1.0 else None
        _warn_unsupported_generation_settings(gen_cfg)
        seen = input_ids if penalty else None  # every token of each row so far, left padding included (as HF)
        # transformers >= 5.2x calls the forward's KV-cache argument `cache`; earlier ones `past_key_values`
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        n = input_ids.shape[0]
        cache = DynamicCache(config=model.config)
        cache.layers = [_AppendLayer(cfg.max_new_tokens) if type(layer) is DynamicLayer else layer
                        for layer in cache.layers]
        out: list[list[int]] = [[] for _ in range(n)]
        live = list(range(n))  # original row of each batch row
        done = [False] * n  # per batch row: finished but not yet compacted away
        attn = attention_mask.long()
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        ids = input_ids
        end = torch.tensor(sorted(eos_ids), device=ids.device, dtype=torch.long)
        # Rows that repeat an earlier row (same prompt and adapter: the k samples of one context) share its
        # prefill: the prompt runs once, then its KV cache and last logits are copied to the repeats.
        distinct: dict[tuple, int] = {}
        firsts, copy_of = [], []  # first row of each distinct prompt; each row's distinct prompt
        for i, r in enumerate(torch.cat([input_ids, attn], 1).tolist()):
            key = (tuple(r), None if index is None else int(index[i]))
            if key not in distinct:
                distinct[key] = len(firsts)
                firsts.append(i)
            copy_of.append(distinct[key])
        # The prompt's last position as an index tensor, not logits_to_keep=1: the slice [:, -1:] of a longer
        # prompt is a strided view, which the LM head's matmul turned into a batched matmul over N copies of
        # the [vocab, hidden] weight (measured with the fp32-training attention on a bf16 model: 2.9 s of a
        # 48-row prefill that takes 0.8 s this way); indexing gives a contiguous [N, 1, hidden] input.
        last = torch.tensor([ids.shape[1] - 1], device=ids.device)
        with self.lora.decoding([] if index is None else index.tolist()):
            for step in range(cfg.max_new_tokens):
                share = step == 0 and len(firsts) < n  # step 0 is the prefill: one row per distinct prompt
                feed = {"input_ids": ids, "attention_mask": attn, "position_ids": pos}
                if share:
                    sel = torch.tensor(firsts, device=ids.device)
                    feed = {k: v[sel] for k, v in feed.items()}
                with self.lora.use(None if index is None else index[firsts if step == 0 else live]):
                    logits = model(**feed, **{cache_kw: cache}, use_cache=True,
                                   logits_to_keep=last if step == 0 else 1).logits[:, -1].float()
                if share:  # the repeats get their prompt's KV cache and logits
                    expand = torch.tensor(copy_of, device=ids.device)
                    cache.batch_select_indices(expand)
                    logits = logits[expand]
                if penalty is not None:  # HF's RepetitionPenaltyLogitsProcessor
                    score = logits.gather(1, seen)
                    logits.scatter_(1, seen, torch.where(score < 0, score * penalty, score / penalty))
                if constraint is not None:
                    allowed = torch.full_like(logits, float("-inf"))
                    for r, row in enumerate(live):
                        allowed[r, constraint.allowed(out[row])] = 0.0
                    logits = logits + allowed
                nxt = _pick_tokens(logits, cfg.temperature, cfg.top_p, top_k)
                if seen is not None:
                    seen = torch.cat([seen, nxt.unsqueeze(1)], dim=1)
                ended = torch.isin(nxt, end).tolist()
                for r, (row, t) in enumerate(zip(live, nxt.tolist())):
                    if done[r]:
                        continue
                    if ended[r]:
                        done[r] = True
                    else:
                        out[row].append(t)
                n_done = sum(done)
                if n_done == len(live) or step == cfg.max_new_tokens - 1:
                    break
                if 4 * n_done >= len(live):  # compact: the finished rows' decoding steps cost as much as live ones
                    keep = [r for r in range(len(live)) if not done[r]]
                    sel = torch.tensor(keep, device=ids.device)
                    cache.batch_select_indices(sel)
                    live, done = [live[r] for r in keep], [False] * len(keep)
                    attn, pos, nxt = attn[sel], pos[sel], nxt[sel]
                    if seen is not None:
                        seen = seen[sel]
                attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
                pos = pos[:, -1:] + 1
                ids = nxt.unsqueeze(1)
            return out


# generation_config fields (with their inactive values) whose logits processors `Engine._decode` does not implement
_UNSUPPORTED_GENERATION = {"no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_new_tokens": (None, 0),
                           "min_length": (None, 0), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
                           "typical_p": (None, 1.0), "min_p": (None, 0.0), "epsilon_cutoff": (None, 0.0),
                           "eta_cutoff": (None, 0.0), "sequence_bias": (None,), "forced_bos_token_id": (None,),
                           "forced_eos_token_id": (None,)}
_warned_generation: set[str] = set()


def _warn_unsupported_generation_settings(gen_cfg) -> None:
    if gen_cfg is None:
        return
    for name, inactive in _UNSUPPORTED_GENERATION.items():
        value = getattr(gen_cfg, name, None)
        if value not in inactive and name not in _warned_generation:
            _warned_generation.add(name)
            warnings.warn(f"the model's generation_config sets {name}={value!r}, which seal-lm's decoder does not "
                          "apply (it applies temperature, top_p, top_k and repetition_penalty)", stacklevel=3)


def _pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None = None) -> torch.Tensor:
    """Greedy (temperature 0) or a temperature + top-k + nucleus (top-p) draw per row, as HF's samplers:
    the k most likely tokens, of which those whose preceding probability mass is < top_p (at least one).
    The draw inverts the kept tokens' CDF with one uniform number per row instead of a full-vocabulary
    multinomial."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs, order = torch.softmax(logits / temperature, dim=-1).sort(dim=-1, descending=True)
    if top_k:
        probs = probs[:, :top_k] / probs[:, :top_k].sum(-1, keepdim=True)
    cdf = probs.cumsum(-1)
    if top_p < 1.0:
        n_keep = ((cdf - probs) < top_p).sum(-1, keepdim=True).clamp(min=1)
    else:
        n_keep = torch.full_like(cdf[:, :1], cdf.shape[1], dtype=torch.long)
    mass = cdf.gather(1, n_keep - 1)
    u = torch.rand(mass.shape, device=logits.device, dtype=cdf.dtype) * mass
    pick = torch.searchsorted(cdf, u, right=True).clamp(max=n_keep - 1)
    return order.gather(1, pick).squeeze(1)


class _AppendLayer(DynamicLayer):
    """A KV-cache layer that appends into a buffer with room for `spare` more tokens instead of
    concatenating (DynamicLayer's torch.cat copies the whole cache at every decoding step)."""

    def __init__(self, spare: int):
        super().__init__()
        self.spare = spare
        self._k = self._v = None
        self._len = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self._len + key_states.shape[-2]
        if self._k is None or need > self._k.shape[-2]:
            shape = (*key_states.shape[:-2], need + self.spare, key_states.shape[-1])
            k, v = key_states.new_empty(shape), value_states.new_empty(shape[:-1] + value_states.shape[-1:])
            if self._len:
                k[..., : self._len, :] = self._k[..., : self._len, :]
                v[..., : self._len, :] = self._v[..., : self._len, :]
            self._k, self._v = k, v
        self._k[..., self._len : need, :] = key_states
        self._v[..., self._len : need, :] = value_states
        self._len = need
        self.keys, self.values = self._k[..., :need, :], self._v[..., :need, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]


class TokenTrie:
    """Constrained decoding to a finite set of strings (e.g. every recipe of a grammar).

    Each string's canonical tokenization is a path in a trie; at every decoding step only the children of
    the row's current node are allowed (HF `generate`'s `prefix_allowed_tokens_fn`), and a finished string
    allows only end tokens. The model's own probabilities choose among the allowed tokens, so a sample is
    a draw from the model restricted to valid outputs, and SFT on the samples teaches the same choices.
    Written here because the set is small and finite: a trie is exact and ~20 lines, where grammar
    libraries (outlines, lm-format-enforcer) would add heavy dependencies for the same result."""

    def __init__(self, tokenizer, strings: list[str], end_ids: list[int]):
        if not strings:
            raise ValueError("TokenTrie needs at least one string")
        self.end_ids = sorted(set(end_ids))
        self.root: dict = {}
        for ids in tokenizer(list(strings), add_special_tokens=False)["input_ids"]:
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})
            node[None] = True  # a complete string ends here

    def allowed(self, generated: list[int]) -> list[int]:
        node = self.root
        for t in generated:
            if t in self.end_ids or t not in node:  # finished (or padding after the end)
                return self.end_ids
            node = node[t]
        nxt = [t for t in node if t is not None]
        return nxt + self.end_ids if None in node else nxt


def _padded_batch(rows: list[tuple[list[int], list[int]]], pad: int) -> dict:
    """Rows (ids, labels) right-padded into one [N, width] batch; `targets[r, t]` = labels[r][t + 1]."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        targets[r, : len(lab) - 1] = torch.tensor(lab[1:], dtype=torch.long)
        attn[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "targets": targets}


def _packed_batch(rows: list[tuple[list[int], list[int]]]) -> dict:
    """Rows (ids, labels) concatenated into one [1, T] row without padding. Position ids restart at 0 for
    each row (transformers then masks attention to stay within a row; _cpu_sdpa splits by
    `seal_seq_lengths` instead); a row's last position predicts nothing, so no row learns its successor."""
    ids = [t for seq, _ in rows for t in seq]
    pos = [p for seq, _ in rows for p in range(len(seq))]
    targets = [t for _, lab in rows for t in lab[1:] + [-100]]
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]),
            "targets": torch.tensor([targets]), "seal_seq_lengths": [len(seq) for seq, _ in rows]}


def _token_ranges(slot_of_row: list[int], lengths: list[int]) -> list[tuple[int, int, int]]:
    """(slot, first token, end token) of each run of consecutive packed rows with the same slot."""
    runs: list[tuple[int, int, int]] = []
    lo = 0
    for k, n in zip(slot_of_row, lengths):
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1], lo + n)
        else:
            runs.append((k, lo, lo + n))
        lo += n
    return runs


def length_groups(lengths: list[int], max_groups: int = 4, overhead: int = 32) -> list[list[int]]:
    """Split rows (by index) into at most `max_groups` groups of similar length, minimising the padded
    tokens computed plus `overhead` tokens per group (the fixed cost of one more forward/backward:
    Python, kernel launches, smaller matmuls). Exact, by dynamic programming over the sorted lengths.

    Measured on ReST-EM round 1's training steps (8 adapters x 2 rows: a ~150-token passage beside
    20-60-token lines): one group pads 93%, the best 2 groups 30%, 4 groups with this overhead ~11%."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    srt = [lengths[i] for i in order]
    n = len(srt)
    if n < 2 or max_groups < 2:
        return [order]
    inf = float("inf")
    # cost[g][j]: best cost of the first j sorted rows in g groups; a group i..j-1 costs (j-i)*srt[j-1]
    cost = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    cost[0][0] = 0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):
                c = cost[g - 1][i] + (j - i) * srt[j - 1] + overhead
                if c < cost[g][j]:
                    cost[g][j], cut[g][j] = c, i
    g = min(range(1, max_groups + 1), key=lambda g: (cost[g][n], g))
    groups, j = [], n
    while g > 0:
        i = cut[g][j]
        groups.append(order[i:j])
        j, g = i, g - 1
    return groups[::-1]


def chat_prompt(tokenizer, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
    """Format one user turn with the tokenizer's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix
    return (f"{system}\n\n" if system else "") + user + ("\n" if not user.endswith("\n") else "") + assistant_prefix
