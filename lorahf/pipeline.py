"""`lorahf run`: load the recipe, load the base once, run each stage that is not already done.

    result = lorahf.run("recipes/quickstart.yaml")
    result.metrics["sft"]["eval_loss"]

A stage is skipped when its marker in the run folder says done with the same stage hash (everything
that decides its output, upstream stages included), so rerunning the same command resumes a run.
"""

from __future__ import annotations

import errno
import importlib.util
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorahf import distributed, reward_model, roles
from lorahf import recipe as recipes
from lorahf.backbone import Backbone
from lorahf.errors import LorahfError
from lorahf.progress import Progress
from lorahf.report import write_report
from lorahf.runs import RunFolder, load_run, write_text
from lorahf.stages import registry


@dataclass
class RunResult:
    folder: RunFolder
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    report: Path | None = None  # report.md


def run(recipe: str | Path | recipes.Recipe, stage: str | None = None, from_stage: str | None = None,
        overrides: list[str] | tuple[str, ...] = (), progress: Progress | None = None,
        force: bool = False, command: str = "lorahf run") -> RunResult:
    """Run a recipe's stages in order; `stage` runs (or reruns) just that one, `from_stage` reruns from there on.

    A finished stage whose settings changed reruns only with `force`; without it the run stops before
    writing anything and says which stages would rerun and which recipe keys changed."""
    progress = progress or Progress()
    if not isinstance(recipe, recipes.Recipe):
        recipe = recipes.load(recipe, overrides)
    selected = select_stages(recipe, stage, from_stage)
    folder = RunFolder(recipe.run_dir)
    preflight(recipe, folder, selected, explicit=bool(stage or from_stage))
    if distributed.world() > 1:
        check_shares(recipe, selected, distributed.world())
    with _plain_errors(folder), folder.lock(command) as recovered:
        if recovered:
            progress.note(f"[yellow]{recovered}[/yellow]")
        explicit = bool(stage or from_stage)
        rerun = stale_stages(recipe, folder, selected)
        if rerun and not force and not explicit:
            raise LorahfError(f"{folder.root}: {why_rerun(recipe, folder, rerun)}; their finished outputs would be "
                              "replaced", hint="add --force to rerun them, or set another `name:` to start a new run")
        if rerun:
            progress.note(f"[yellow]{why_rerun(recipe, folder, rerun)}[/yellow]")
        if distributed.is_main():
            write_text(folder.recipe_path, recipes.dump(recipe))
            ensure_base(recipe, progress)
        distributed.barrier()
        if "tensorboard" in recipe.report_to:
            folder.report_to_tensorboard()
        try:
            result = _run_stages(recipe, folder, selected, explicit, progress)
        finally:
            folder.close()
        if distributed.is_main():
            result.report = write_report(folder)
    return result


def _run_stages(recipe, folder: RunFolder, selected: list[str], explicit: bool, progress: Progress) -> RunResult:
    result = RunResult(folder=folder)
    device = distributed.device() if distributed.world() > 1 else recipe.model.device
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization, device, recipe.model.gradient_checkpointing)
    try:
        for name in selected:
            stage_hash = recipe.stage_hash(name)
            if folder.is_done(name, stage_hash) and not explicit:
                result.skipped.append(name)
                result.metrics[name] = folder.marker(name).metrics
                progress.note(f"[dim]{name}: done already (same recipe), skipped[/dim]")
                continue
            progress.note(f"[bold]{name}[/bold]: starting")
            if not folder.checkpoint_dir(name).exists():
                folder.drop_metrics(name)  # starting over: the steps are logged anew
            started = time.perf_counter()
            try:
                metrics = registry.get(name).run(recipe, backbone, folder, progress)
            except (MemoryError, torch.OutOfMemoryError):
                raise LorahfError(f"{name}: out of memory on the {backbone.device.type}; the last saved outputs are "
                                  "kept", hint=registry.get(name).memory_hint) from None
            folder.mark_done(name, stage_hash, metrics, time.perf_counter() - started)
            shutil.rmtree(folder.checkpoint_dir(name), ignore_errors=True)  # the marker supersedes it
            result.ran.append(name)
            result.metrics[name] = metrics
        result.memory = backbone.memory_report().as_dict()
        if (encoder := reward_model.beside(backbone)) is not None:
            result.memory.update(reward_model=encoder.name, reward_model_bytes=encoder.memory_bytes())
    finally:
        backbone.close()
    return result


def stale_stages(recipe: recipes.Recipe, folder: RunFolder, selected: list[str]) -> list[str]:
    """Selected stages that finished with other settings than the recipe's now (they would rerun)."""
    return [name for name in selected
            if (marker := folder.marker(name)) and marker.done and marker.recipe_hash != recipe.stage_hash(name)]


def why_rerun(recipe: recipes.Recipe, folder: RunFolder, stages: list[str]) -> str:
    """'sft, reward would rerun: sft.epochs 10 -> 12' — the recipe keys that differ from the folder's recipe.yaml."""
    import yaml

    changed: list[str] = []
    if folder.recipe_path.is_file():
        before = yaml.safe_load(folder.recipe_path.read_text(encoding="utf-8")) or {}
        changed = _differences(before, recipe.model_dump(mode="json"), skip={"name", "output_dir"})
        inputs = set().union(*(recipe.stage_inputs(stage) for stage in stages))
        changed = [line for line in changed  # only the keys these stages' outputs depend on
                   if any(line.split(" ", 1)[0] == key or line.startswith(key + ".") for key in inputs)]
    if not changed:
        return f"{', '.join(stages)} would rerun: the recipe is the same, but an older lorahf ran them (another stage hash)"
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    return f"{', '.join(stages)} would rerun because the recipe changed: {', '.join(changed[:6])}{more}"


def _differences(before: object, after: object, prefix: str = "", skip: set[str] = frozenset()) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            if key in skip:
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            found += _differences(before.get(key), after.get(key), path)
        return found
    return [] if before == after else [f"{prefix} {_short(before)} -> {_short(after)}"]


def _short(value: object) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@contextmanager
def _plain_errors(folder: RunFolder) -> Iterator[None]:
    """A full disk or a read-only folder as one line; atomic writes leave the files already there intact."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        raise LorahfError(f"cannot write {error.filename or folder.root}: {error.strerror}; everything written "
                          f"before in {folder.root} is intact",
                          hint="free some space (or make the folder writable) and run the same command to resume") \
            from None


def select_stages(recipe: recipes.Recipe, stage: str | None, from_stage: str | None) -> list[str]:
    if stage and from_stage:
        raise LorahfError("give --stage or --from, not both")
    for name in (stage, from_stage):
        if name is not None and name not in recipe.stages:
            raise LorahfError(f"stage '{name}' is not in this recipe's stages ({', '.join(recipe.stages)})")
    if stage:
        return [stage]
    if from_stage:
        return recipe.stages[recipe.stages.index(from_stage):]
    return list(recipe.stages)


def preflight(recipe: recipes.Recipe, folder: RunFolder, selected: list[str], explicit: bool) -> None:
    """Read what the stages that will run are going to read, before the run folder is touched: a mistake in
    the last stage's data or a judge's file costs seconds, not the stages before it. Read-only."""
    from lorahf import data
    from lorahf.backbone import check_base
    from lorahf.judge import api_key, load_function

    if not recipe.model.make_tiny_from or Path(recipe.model.name).exists():
        check_base(recipe.model.name, recipe.model.quantization, recipe.model.device)
    reward = recipe.reward
    if "reward" in selected and reward is not None and reward.model is not None and (
            not reward.make_tiny_from or Path(reward.model).exists()):
        from lorahf.reward_model import check_model

        check_model(reward.model, trained=not reward.train)
    if "tensorboard" in recipe.report_to and importlib.util.find_spec("tensorboardX") is None:
        raise LorahfError("report_to: tensorboard needs the tensorboardX package, which is not installed",
                          hint="pip install 'lorahf[tensorboard]', or remove tensorboard from report_to")
    will_run = [name for name in selected if explicit or not folder.is_done(name, recipe.stage_hash(name))]
    for name in will_run:
        record = registry.get(name)
        spec = record.data_spec(recipe)
        if spec is None:
            continue
        for files, others in ((spec.files, spec.eval_files), (spec.eval_files, spec.files)):
            if files:
                rows = data.load_rows(files, record.data, spec.columns, also=others)
                if record.layouts:
                    record.check_layout(data.preference_format(rows), files)
    if will_run:
        for judge in recipe.judges.values():
            if judge.python:
                load_function(judge.python)
    if "evaluate" in will_run:
        for name in recipe.evaluate.judges or list(recipe.judges):
            if name in recipe.judges and recipe.judges[name].llm:
                api_key(name, recipe.judges[name].llm)


def ensure_base(recipe: recipes.Recipe, progress: Progress) -> None:
    """Offline quickstart: build the tiny base (T5 or Llama-shaped), and a tiny BERT-shaped reward encoder, where
    the recipe expects them, if they are not there yet."""
    ensure_tiny(recipe.model.name, recipe.model.make_tiny_from, recipe.model.make_tiny_family, "model", progress)
    if recipe.reward is not None and recipe.reward.model is not None:
        ensure_tiny(recipe.reward.model, recipe.reward.make_tiny_from, "encoder", "reward", progress)


TINY_NAMES = {"seq2seq": "T5", "causal": "Llama", "encoder": "BERT-shaped encoder"}


def ensure_tiny(name: str, source: str | None, family: str, section: str, progress: Progress) -> None:
    """Build the tiny `family` model at `name` from the data folder `source` unless it is there (and up to date)."""
    from lorahf.tiny import make_tiny, spec_for, tiny_family, why_stale

    if source is None:
        return
    if Path(name).exists():
        built = tiny_family(name)
        reason = (f"this tiny model is {built}, the recipe wants a {family} one" if built not in (None, family)
                  else why_stale(name, source))
        if reason:
            raise LorahfError(f"{name}: {reason}", hint=f"delete {name} (and the runs made with it) to rebuild it "
                                                       f"(or fix {section}.make_tiny_from)")
        return
    progress.note(f"building the offline tiny {TINY_NAMES[family]} in {name} from {source}")
    make_tiny(source, name, spec_for(family))


def check_shares(recipe: recipes.Recipe, selected: list[str], processes: int) -> None:
    """Data parallelism splits every training batch between the processes: each must get rows, and PPO's
    batches and minibatches must split evenly (each process takes the same number of minibatch steps)."""
    sizes = [(f"{name}.batch_size", getattr(recipe, name).batch_size) for name in selected
             if isinstance(getattr(recipe, name), recipes.TrainingSpec)]
    if "ppo" in selected:
        sizes += [("ppo.batch_size", recipe.ppo.batch_size), ("ppo.minibatch_size", recipe.ppo.minibatch_size)]
    for key, size in sizes:
        if size < processes or (key.startswith("ppo.") and size % processes):
            raise LorahfError(f"{key} ({size}) does not split between the {processes} processes that share each batch",
                              hint=f"set {key} to a multiple of {processes}")

def describe(recipe: recipes.Recipe, read_data: bool = True) -> list[tuple[str, str, str]]:
    """One row per part of the run (stage, what runs, data), checking each stage's data on the way."""
    from lorahf import data

    built = "" if Path(recipe.model.name).exists() or not recipe.model.make_tiny_from else \
        f" (built on the first run from {recipe.model.make_tiny_from})"
    rows = [("model", f"{recipe.model.name}, {recipe.model.quantization}{built}", "")]
    folder = RunFolder(recipe.run_dir)
    for record in registry.in_recipe(recipe):
        name = record.name
        what = record.function("describe")(recipe)
        what += " [done]" if folder.is_done(name, recipe.stage_hash(name)) else ""
        spec = record.data_spec(recipe)
        own = getattr(recipe, name).data is not None
        if spec is None or not own:
            source = next((s for s in record.data_from if getattr(recipe, s) is not None), None)
            words = {"prompts": "held-out prompts", "preference": "preferences"}.get(record.data, "data")
            rows.append((name, what, f"the {source} stage's {words}" if source else ""))
            continue
        summary = ", ".join(spec.files)
        if read_data:
            rows_loaded = data.load_rows(spec.files, record.data, spec.columns, also=spec.eval_files)
            summary = f"{len(rows_loaded)} rows from {summary}"
        rows.append((name, what, summary))
    return rows


# ------------------------------------------------------------------------------------ an existing run
def evaluate(run_dir: str | Path, adapters: list[str] | None = None, judges: list[str] | None = None,
             progress: Progress | None = None) -> RunResult:
    """Run (or rerun) the evaluate stage of a finished run, with the recipe's settings or these."""
    recipe = load_run(run_dir)
    section = recipe.evaluate or recipes.EvaluateStage()
    section = section.model_copy(update={k: v for k, v in (("adapters", adapters), ("judges", judges)) if v})
    raw = recipe.model_dump(mode="json")
    raw["evaluate"] = section.model_dump(mode="json")
    raw["stages"] = [s for s in recipe.stages if s != "evaluate"] + ["evaluate"]
    return run(recipes.validate(raw, source=str(RunFolder(run_dir).recipe_path)), stage="evaluate", progress=progress,
               command="lorahf eval")


def judge(run_dir: str | Path, judge_name: str, a: str, b: str, n: int, out: str | Path,
          progress: Progress | None = None) -> dict[str, int]:
    """Put `n` held-out prompts' answers by adapters `a` and `b` in front of a judge (a person too), appending
    each verdict to the preference file `out`; items judged there already are skipped, so it resumes."""
    from lorahf.compare import compare_adapters, held_out_prompts
    from lorahf.judge import REWARD as REWARD_JUDGE
    from lorahf.judge import PreferenceFile, build_judges
    from lorahf.stages.evaluate import sampling
    from lorahf.training import ensure_adapter

    progress = progress or Progress()
    recipe = load_run(run_dir)
    folder = RunFolder(recipe.run_dir)
    if judge_name != REWARD_JUDGE and judge_name not in recipe.judges:  # before the model loads
        raise LorahfError(f"{run_dir}: no judge named {judge_name} (available: {', '.join(['reward', *recipe.judges])})",
                          hint="judges come from the recipe's `judges:`; `reward` needs a trained reward stage")
    out = PreferenceFile(out)
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization, recipe.model.device)
    try:
        for role in dict.fromkeys((a, b)):
            ensure_adapter(backbone, folder, role, needed_by="judge")
        reward = reward_model.of_run(recipe, backbone, folder)
        if reward is None and judge_name == REWARD_JUDGE:
            ensure_adapter(backbone, folder, roles.REWARD, needed_by="judge")  # says which stage writes it
        chosen = build_judges(recipe, reward, names=[judge_name], interactive=True)[judge_name]
        prompts = held_out_prompts(recipe, n, backbone.tokenizer)
        with progress.task(f"answers by {a} and {b}", total=2) as bar:  # judged below: a person may be the judge
            found = compare_adapters(backbone, prompts, [a, b], {}, sampling(recipe), reward,
                                     on_answered=lambda role: bar.advance())
        texts = {role: found.answers[role]["texts"] for role in (a, b)}
        items = [{"prompt": p, "a": x, "b": y, "a_by": a, "b_by": b}
                 for p, x, y in zip(prompts.texts, texts[a], texts[b])]
        if chosen.interactive:
            return chosen.session(items, out)
        pending = [item for item in items if not out.has(item)]
        verdicts = chosen.compare([i["prompt"] for i in pending], [i["a"] for i in pending], [i["b"] for i in pending])
        for item, verdict in zip(pending, verdicts):
            if verdict is not None:
                out.append(item, verdict, judge_name)
        judged = sum(v is not None for v in verdicts)
        return {"judged": judged, "no_verdict": len(pending) - judged, "total_judged": len(items) - len(pending) + judged}
    finally:
        backbone.close()
