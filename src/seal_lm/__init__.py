"""seal-lm: Self-Adapting Language Models (SEAL) — self-edits, a fast LoRA inner loop and a ReST-EM outer loop."""

__version__ = "0.1.0"
