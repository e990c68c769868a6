"""lorahf: the RLHF pipeline of "Learning to Summarize from Human Feedback" on one base model and LoRA adapters."""

__version__ = "0.1.0"
