"""Generate from a run's adapter or from a merged folder, in batches.

    texts = generate("runs/quickstart", ["Falcons beat ..."], adapter="policy")
    texts = generate("merged/policy", prompts)           # a folder written by `lorahf merge`

A run generates through the Backbone (the base as the recipe holds it, 8-bit by default, plus the adapter);
a merged folder through plain transformers. Both wrap prompts in the run's prompt template and stop at its
response length unless told otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lorahf.errors import LorahfError


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int | None = None  # None: the run's max_response_tokens
    temperature: float | None = None  # None: greedy
    top_k: int = 0
    batch_size: int = 32


def generate(target: str | Path, prompts: list[str], adapter: str = "policy", sampling: Sampling = Sampling(),
             seed: int = 0, progress=None) -> list[str]:
    """One answer per prompt from `target`: a run folder (with `adapter`) or a merged folder."""
    from lorahf.progress import Progress

    progress = progress or Progress()
    target = Path(target)
    torch.manual_seed(seed)
    if (target / "recipe.yaml").is_file():
        return _from_run(target, prompts, adapter, sampling, progress)
    if (target / "config.json").is_file():
        return _from_folder(target, prompts, sampling, progress)
    raise LorahfError(f"{target}: neither a run folder (recipe.yaml) nor a model folder (config.json)",
                      hint="give the folder `lorahf run` or `lorahf merge` wrote")


def _from_run(run_dir: Path, prompts: list[str], adapter: str, sampling: Sampling, progress) -> list[str]:
    from lorahf.backbone import Backbone, respond
    from lorahf.data import encode_prompts
    from lorahf.runs import RunFolder, load_run
    from lorahf.training import ensure_adapter

    recipe = load_run(run_dir)
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization, recipe.model.device)
    try:
        ensure_adapter(backbone, RunFolder(recipe.run_dir), adapter, needed_by="generate")
        backbone.use(adapter)
        backbone.model.eval()
        ids, _ = encode_prompts(backbone.tokenizer, prompts, recipe.max_prompt_tokens, recipe.prompt_format)
        with progress.task(f"generate ({adapter})", total=len(ids)) as bar:
            texts = respond(backbone, ids, sampling.max_new_tokens or recipe.max_response_tokens,
                            sampling.batch_size, on_batch=bar.advance, do_sample=sampling.temperature is not None,
                            temperature=sampling.temperature or 1.0, top_k=sampling.top_k)
        return texts
    finally:
        backbone.close()


def _from_folder(folder: Path, prompts: list[str], sampling: Sampling, progress) -> list[str]:
    from lorahf.backbone import quiet_libraries
    from lorahf.data import PromptFormat, collate, encode_prompts
    from lorahf.families import load_plain
    from lorahf.merge import SETTINGS_FILE

    quiet_libraries()
    settings_path = folder / SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    form = PromptFormat(settings.get("prompt_template", "{prompt}"), settings.get("chat_template", False),
                        settings.get("system_prompt"))
    max_new_tokens = sampling.max_new_tokens or settings.get("max_new_tokens", 64)
    model, tokenizer, family = load_plain(str(folder))
    model.eval()
    texts: list[str] = []
    with progress.task(f"generate ({folder.name})", total=len(prompts)) as bar, torch.no_grad():
        for start in range(0, len(prompts), sampling.batch_size):
            chunk = prompts[start:start + sampling.batch_size]
            ids, _ = encode_prompts(tokenizer, chunk, settings.get("max_prompt_tokens", 512), form)
            batch = collate(ids, None, tokenizer.pad_token_id)
            options = ({"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k}
                       if sampling.temperature is not None else {"do_sample": False, "num_beams": 1})
            output = model.generate(**family.generation_inputs(batch), max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id, **options)
            answers = family.generated_responses(output, batch)
            texts += [t.strip() for t in tokenizer.batch_decode(answers, skip_special_tokens=True)]
            bar.advance(len(chunk))
    return texts


def read_prompts(path: str | Path, column: str = "prompt") -> list[str]:
    """The `column` of a JSONL/JSON/CSV/Parquet file, checked like any prompts file."""
    from lorahf.data import load_rows

    return list(load_rows([str(path)], "prompts", {"prompt": column} if column != "prompt" else {})["prompt"])
