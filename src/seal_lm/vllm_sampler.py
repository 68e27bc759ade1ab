"""Optional self-edit sampling with vLLM, for GPU users (`--generation.backend vllm`).

Only the sampling of self-edits goes through vLLM: it decodes from the generator's plain weights, which is
where vLLM's paged attention and continuous batching pay off (the paper's setup, minus the HTTP server).
Answering with freshly trained LoRA adapters stays on the HF engine, which holds those adapters in memory.
vLLM is not a dependency: `pip install vllm` on a CUDA machine. The embedded model is passed to vLLM as
its converted safetensors directory, so every model name `load_model` accepts works here too.
"""

from __future__ import annotations

from .engine import GenerationConfig
from .models import EMBEDDED, _embedded_dir


def model_path(name: str) -> str:
    """A path or hub id vLLM can load for a seal-lm model name."""
    if name == EMBEDDED:
        return str(_embedded_dir())
    if name == "tiny-random" or name.startswith("random:"):
        raise ValueError(f"{name!r} exists only in memory; vLLM needs weights on disk or a hub id")
    return name  # a local checkpoint directory or a hub id: vLLM reads both


class VLLMSampler:
    """One vLLM engine for one generator, sharing the GPU with the HF training engine."""

    def __init__(self, model: str, dtype: str | None = None, gpu_memory_utilization: float = 0.3):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError("--generation.backend vllm needs vLLM: `pip install vllm` on a CUDA machine "
                               "(or use the default backend, hf)") from e
        self.llm = LLM(model=model_path(model), dtype=dtype or "auto", seed=0,
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)

    def generate(self, prompts: list[str], cfg: GenerationConfig, seed: int,
                 choices: list[str] | None = None, progress: bool = False) -> tuple[list[str], int]:
        """Sample one completion per prompt; each prompt gets its own seed (seed, i), so the k copies of a
        context's prompt give k different self-edits and a rerun gives the same ones.
        `choices` restricts every completion to one of these strings (vLLM's guided decoding)."""
        from vllm import SamplingParams

        greedy = cfg.temperature <= 0
        base = dict(temperature=0.0 if greedy else cfg.temperature, top_p=1.0 if greedy else cfg.top_p,
                    max_tokens=cfg.max_new_tokens)
        if choices:
            base.update(_choice_kwargs(choices))
        params = [SamplingParams(**base, seed=seed * 1_000_003 + i) for i in range(len(prompts))]
        outs = self.llm.generate(prompts, params, use_tqdm=progress)
        texts = [o.outputs[0].text for o in outs]
        return texts, sum(len(o.outputs[0].token_ids) for o in outs)


def _choice_kwargs(choices: list[str]) -> dict:
    """vLLM's guided choice; the parameter class was renamed across versions."""
    try:
        from vllm.sampling_params import StructuredOutputsParams  # vLLM >= 0.11

        return {"structured_outputs": StructuredOutputsParams(choice=list(choices))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(choice=list(choices))}
