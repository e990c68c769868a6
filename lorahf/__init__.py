"""lorahf: the RLHF pipeline of "Learning to Summarize from Human Feedback" on one base model and LoRA adapters.

    import lorahf
    result = lorahf.run("recipes/quickstart.yaml")
    backbone = lorahf.Backbone.load("google/flan-t5-base", quantization="8bit")
"""

__version__ = "0.1.0"

__all__ = ["Backbone", "LorahfError", "load_recipe", "run"]


def __getattr__(name: str):
    # Imported on first use: `lorahf --version` should not pay for torch and transformers.
    if name == "run":
        from lorahf.pipeline import run
        return run
    if name == "Backbone":
        from lorahf.backbone import Backbone
        return Backbone
    if name == "load_recipe":
        from lorahf.recipe import load
        return load
    if name == "LorahfError":
        from lorahf.errors import LorahfError
        return LorahfError
    raise AttributeError(f"module 'lorahf' has no attribute {name!r}")
