"""Merge: one adapter folded into a plain transformers model, proven to answer exactly as the adapter did.

    1. the base, loaded **unquantized** (merging into int8 or NF4 weights would round the merged weights
       to the quantization grid), and the adapter on it with peft
    2. the adapter's greedy answers to held-out prompts, and its logits along them
    3. merge_and_unload; save_pretrained model and tokenizer, and a model card (README.md) that says where
       the model came from: base, adapter, data files and their hashes, recipe hash, evaluation metrics
    4. reload the folder with plain transformers (no peft, no lorahf): the same greedy answers token for
       token, logits within LOGIT_TOLERANCE, or the merge fails and the folder is not written

Everything is written deterministically (same inputs, same bytes), so a second merge changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lorahf import reward_model, roles
from lorahf.errors import LorahfError
from lorahf.runs import atomic_path
from lorahf.stages import registry

CHECK_PROMPTS = 16  # held-out prompts answered by adapter and merged model
LOGIT_TOLERANCE = 1e-4  # max |logit difference| allowed; fp32 merges measure ~1e-6 on the tiny model
SETTINGS_FILE = "lorahf.json"  # prompt template and generation length, for `lorahf generate MERGED`


@dataclass
class MergeResult:
    out: Path
    adapter: str
    prompts: int  # held-out prompts checked
    identical: int  # of them, answered token for token the same (a reward model: scored within LOGIT_TOLERANCE)
    max_logit_difference: float
    checked: str = "held-out greedy answers identical to the adapter's"


def merge(run_dir: str | Path, adapter: str, out: str | Path, progress=None) -> MergeResult:
    from peft import PeftModel

    from lorahf.backbone import quiet_libraries
    from lorahf.data import collate, encode_prompts
    from lorahf.families import load_plain
    from lorahf.progress import Progress
    from lorahf.runs import RunFolder, load_run

    quiet_libraries()
    progress = progress or Progress()
    recipe = load_run(run_dir)
    folder = RunFolder(recipe.run_dir)
    adapter_dir = folder.adapter_dir(adapter)
    if adapter == roles.REWARD and (adapter_dir / reward_model.MARKER).is_file():
        return merge_reward(recipe, folder, Path(out), progress)
    if adapter in roles.SCORING:
        raise LorahfError(f"'{adapter}' scores answers and does not write them; "
                          f"merge {roles.SFT}, {roles.POLICY} or {roles.POLICY_LAST} (or a reward model on its own "
                          "encoder, reward.model)")
    if not (adapter_dir / "adapter_config.json").is_file():
        found = sorted(p.name for p in (folder.root / "adapters").glob("*") if p.name not in roles.SCORING)
        raise LorahfError(f"{folder.root}: has no '{adapter}' adapter (adapters there: {', '.join(found) or 'none'})")
    out = Path(out)

    # 1. Unquantized base + adapter, in fp32 so that the comparison is exact
    base, tokenizer, family = load_plain(recipe.model.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()

    # 2. The adapter's answers
    prompts = check_prompts(recipe)
    ids, _ = encode_prompts(tokenizer, prompts, recipe.max_prompt_tokens, recipe.prompt_format)
    encoded = collate(ids, None, tokenizer.pad_token_id)
    with progress.task(f"merge {adapter}", total=3) as bar:
        expected, expected_logits = greedy(model, family, encoded, recipe.max_response_tokens)
        bar.advance(step="adapter answered")

        # 3. Merge and save
        merged = model.merge_and_unload()
        with atomic_path(out) as temp:
            merged.save_pretrained(temp)
            tokenizer.save_pretrained(temp)
            (temp / "README.md").write_text(model_card(recipe, folder, adapter, len(prompts), family.name),
                                              encoding="utf-8")
            (temp / SETTINGS_FILE).write_text(json.dumps(
                {"run": recipe.name, "adapter": adapter, "prompt_template": recipe.prompt_template,
                 "chat_template": recipe.chat_template, "system_prompt": recipe.system_prompt, "max_prompt_tokens": recipe.max_prompt_tokens, "max_new_tokens": recipe.max_response_tokens},
                indent=2, sort_keys=True) + "\n", encoding="utf-8")
            bar.advance(step="saved")

            # 4. Plain transformers, from the folder alone
            reloaded = family.auto_class().from_pretrained(temp, dtype=torch.float32).eval()
            answers, logits = greedy(reloaded, family, encoded, recipe.max_response_tokens)
            identical = sum(torch.equal(a, b) for a, b in zip(answers, expected))
            difference = max((a[: len(b)] - b[: len(a)]).abs().max().item() for a, b in zip(logits, expected_logits))
            bar.advance(step="checked")
            if identical != len(prompts) or difference > LOGIT_TOLERANCE:
                raise LorahfError(f"merge of '{adapter}' does not answer like the adapter: {identical} of {len(prompts)} "
                                  f"greedy answers identical, max logit difference {difference:.2e} "
                                  f"(tolerance {LOGIT_TOLERANCE:g}); nothing was written to {out}")
    return MergeResult(out, adapter, len(prompts), identical, difference)


def merge_reward(recipe, folder, out: Path, progress) -> MergeResult:
    """A reward model on its own encoder, made deployable: its LoRA merged (full weights as they are) and the
    centring offset folded into the classifier's bias, saved as a plain one-label AutoModelForSequenceClassification
    whose logit is the run's score; reloaded and checked on held-out preference texts, or nothing is written."""
    from transformers import AutoModelForSequenceClassification

    from lorahf.progress import Progress

    progress = progress or Progress()
    reward = reward_model.EncoderReward.from_folder(folder.adapter_dir(roles.REWARD), recipe, torch.device("cpu"),
                                                    quantization="none")
    prompts, responses = check_pairs(recipe)
    with progress.task("merge reward", total=2) as bar:
        items = reward.tokenize(prompts, responses)
        expected = reward.score_items(items, len(items))
        model = reward.model.merge_and_unload() if reward.tuning == "lora" else reward.model
        output = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]
        with torch.no_grad():
            output.bias -= reward.offset
        with atomic_path(out) as temp:
            model.save_pretrained(temp)
            reward.tokenizer.save_pretrained(temp)
            (temp / "README.md").write_text(reward_card(recipe, folder, reward, len(items)), encoding="utf-8")
            bar.advance(step="saved")
            reloaded = AutoModelForSequenceClassification.from_pretrained(temp, dtype=torch.float32).eval()
            with torch.no_grad():
                scores = reloaded(**reward.tokenizer.pad(items, return_tensors="pt")).logits[:, 0]
            difference = (scores - expected).abs()
            identical = int((difference <= LOGIT_TOLERANCE).sum())
            bar.advance(step="checked")
            if identical != len(items):
                raise LorahfError(f"merge of the reward model does not score like the run's: {identical} of {len(items)} "
                                  f"scores within {LOGIT_TOLERANCE:g} (max difference {difference.max():.2e}); nothing "
                                  f"was written to {out}")
    return MergeResult(out, roles.REWARD, len(items), identical, difference.max().item(),
                       checked=f"held-out scores equal to the run's (offset {reward.offset:+.4f} folded in)")


def check_pairs(recipe) -> tuple[list[str], list[str]]:
    """(prompt, response) texts of the reward stage's first CHECK_PROMPTS held-out preferences, every response."""
    from lorahf.data import preference_format
    from lorahf.stages.reward import response_texts
    from lorahf.training import load_stage_data

    _, rows = load_stage_data(recipe.reward.data, "preference", recipe.seed)
    rows = rows.select(range(min(CHECK_PROMPTS, len(rows))))
    return response_texts(rows, preference_format(rows))


def reward_card(recipe, folder, reward, checked: int) -> str:
    """README.md of a merged reward model: how to score with it, where it came from."""
    marker = folder.marker("reward")
    accuracy = f"{marker.metrics['eval_accuracy']:.3f}" if marker is not None else "not recorded"
    return "\n".join([
        f"# {recipe.name}: the reward model (`{reward.name}`, {reward.model.config.model_type})", "",
        "A plain `transformers` one-label sequence classifier made by lorahf: it reads (prompt, response) as a text "
        "pair and its logit is the run's reward, centred so that the SFT data's own responses score 0 on average "
        f"(offset {reward.offset:+.4f} folded into the classifier's bias). It loads without lorahf or peft:", "",
        "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "score = model(**tokenizer(PROMPT, RESPONSE, truncation=True, return_tensors='pt')).logits[0, 0]", "```", "",
        f"lorahf checked it before writing this folder: on {checked} held-out responses its scores equal the run's "
        f"within {LOGIT_TOLERANCE:g}.", "",
        "| what | value |", "|---|---|", f"| encoder | `{reward.name}` ({reward.tuning}) |",
        f"| held-out accuracy | {accuracy} |", f"| recipe hash | `{recipe.hash}` |",
        *[f"| reward data | `{file}` (sha256 {_file_hash(Path(file))}) |" for file in recipe.reward.data.files]]) + "\n"


def check_prompts(recipe) -> list[str]:
    """Held-out prompts to compare on: evaluate's or ppo's held-out split, else sft's."""
    from lorahf.training import held_out_rows

    rows = held_out_rows(recipe, or_sft=True)
    if rows is None:
        raise LorahfError("the recipe has no data to take prompts from for the merge check")
    return list(rows["prompt"][:CHECK_PROMPTS])


@torch.no_grad()
def greedy(model, family, batch, max_new_tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy answers (token ids, cut after EOS) and the logits that chose each of their tokens."""
    output = model.generate(**family.generation_inputs(batch), max_new_tokens=max_new_tokens, do_sample=False,
                            num_beams=1, output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(output.logits, dim=1)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    answers, chosen = [], []
    for row, sequence in enumerate(family.generated_responses(output.sequences, batch)):
        ends = (sequence == eos).nonzero()
        length = ends[0].item() + 1 if len(ends) else len(sequence)
        answers.append(sequence[:length].clone())
        chosen.append(logits[row, :length].clone())
    return answers, chosen


def model_card(recipe, folder, adapter: str, prompts: int, family: str = "seq2seq") -> str:
    """README.md of the merged folder: what it is, where it came from, how it did. No timestamps: a second
    merge of the same run writes the same bytes."""
    auto = "AutoModelForSeq2SeqLM" if family == "seq2seq" else "AutoModelForCausalLM"
    if recipe.chat_template:
        system = f'{{"role": "system", "content": {recipe.system_prompt!r}}}, ' if recipe.system_prompt is not None else ""
        encode = [f'messages = [{system}{{"role": "user", "content": {recipe.prompt_template!r}.format(prompt=TEXT)}}]',
                  "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', "
                  "return_dict=True)"]
    else:
        encode = [f"inputs = tokenizer({recipe.prompt_template!r}.format(prompt=TEXT), return_tensors='pt')"]
    answer = "[0]" if family == "seq2seq" else "[0, inputs['input_ids'].shape[1]:]"  # a decoder repeats the prompt
    lines = [f"# {recipe.name}: `{adapter}` merged into `{recipe.model.name}`", "",
             f"A plain `transformers` {'seq2seq' if family == 'seq2seq' else 'causal'} language model made by lorahf: "
             f"the `{adapter}` LoRA adapter of the run `{recipe.name}` merged into its base, unquantized (fp32). It "
             "loads without lorahf or peft:", "",
             "```python", f"from transformers import {auto}, AutoTokenizer",
             f"model = {auto}.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)", *encode,
             f"print(tokenizer.decode(model.generate(**inputs, max_new_tokens={recipe.max_response_tokens}){answer}, "
             "skip_special_tokens=True))", "```", "",
             f"lorahf checked it before writing this folder: on {prompts} held-out prompts its greedy answers equal "
             f"the adapter's token for token and its logits are within {LOGIT_TOLERANCE:g}.", "",
             "## Provenance", "", "| what | value |", "|---|---|",
             f"| base | `{recipe.model.name}` (the run held it as {recipe.model.quantization}) |",
             f"| adapter | `{adapter}` (sha256 {_file_hash(folder.adapter_dir(adapter) / 'adapter_model.safetensors')}) |",
             f"| recipe hash | `{recipe.hash}` |", f"| prompt template | `{recipe.prompt_template}` |"]
    trained = [stage for stage in registry.in_recipe(recipe) if stage.creates]  # the stages that made adapters
    for stage in trained:
        data = stage.data_spec(recipe)
        for file in [*data.files, *data.eval_files] if data else []:
            lines.append(f"| {stage.name} data | `{file}` (sha256 {_file_hash(Path(file))}) |")
    lines += ["", "## Metrics", ""]
    marker = folder.marker("evaluate")
    if marker is None:
        lines.append("The run has no evaluation (`lorahf eval RUN` makes one).")
    else:
        lines += ["From the run's evaluation (stages/evaluate.json):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_number(value)} |" for key, value in marker.metrics.items()
                  if not isinstance(value, (dict, str, bool)) or key == "baseline"]
    for stage in trained:
        marker = folder.marker(stage.name)
        if marker is not None:
            shown = {k: v for k, v in marker.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            lines += ["", f"{stage.name}: " + ", ".join(f"{k} {_number(v)}" for k, v in shown.items())]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return json.dumps(value) if not isinstance(value, str) else value


def _file_hash(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if not path.is_file():
        return "not a local file"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
