"""The `lorahf` command: parse, call the library, print with rich. Nothing else lives here."""

from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lorahf import __version__
from lorahf.errors import LorahfError

console = Console()
errors = Console(stderr=True)


def friendly(command):
    """Show a LorahfError as its own lines (no traceback unless --debug) and exit non-zero."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except LorahfError as error:
            if debug:
                raise
            say_error(error.message, error.hint)
            sys.exit(1)
        except KeyboardInterrupt:
            errors.print("[yellow]interrupted[/yellow]: finished stages are kept; run the same command to resume")
            sys.exit(130)

    return wrapper


def say_error(message: str, hint: str | None = None) -> None:
    """An error as lorahf shows every error: one `error:` line, then a `hint:` line where one helps."""
    errors.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        errors.print(f"[dim]hint: {escape(hint)}[/dim]", highlight=False, soft_wrap=True)


class Lorahf(click.Group):
    """The command group; click's own usage errors (a missing argument, an unknown option) read like
    lorahf's: one `error:` line and a hint, instead of the usage text."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            returned = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "lorahf"
            say_error(error.format_message(), f"`{command} -h` shows how to call it")
            sys.exit(error.exit_code)
        except click.ClickException as error:
            say_error(error.format_message())
            sys.exit(error.exit_code)
        except click.Abort:
            errors.print("aborted")
            sys.exit(1)
        sys.exit(returned if isinstance(returned, int) else 0)


@click.group(cls=Lorahf, name="lorahf", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorahf")
@click.option("--debug", is_flag=True, help="Show full Python tracebacks.")
def main(debug: bool) -> None:
    """RLHF on one base model: SFT, reward model, PPO and evaluation as LoRA adapters.

    \b
    Examples:
      lorahf run recipes/quickstart.yaml          # the offline quickstart
      lorahf init data/ --out my-recipe.yaml       # a recipe for your own files
      lorahf run my-recipe.yaml
    """


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--base", default="google/flan-t5-base", show_default=True,
              help="The base model: a hub id or a local folder. The recipe's settings are chosen for it: lorahf's "
                   "tiny T5, each Flan-T5 size, any other base by its parameter count.")
@click.option("--out", default="recipe.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the recipe.")
@click.option("--name", help="The run's name, i.e. its folder runs/NAME (default: the recipe file's name).")
@click.option("--force", is_flag=True, help="Replace the --out file if it exists.")
@friendly
def init(files: tuple[str, ...], base: str, out: str, name: str | None, force: bool) -> None:
    """Look at your data files, guess which stage reads each and which column is which, and write a
    commented recipe. In a terminal it asks about columns it cannot tell apart; elsewhere it says so.

    \b
    Examples:
      lorahf init data/train.jsonl data/preferences.csv data/prompts.parquet
      lorahf init data/ --base google/flan-t5-large --out large.yaml
    """
    from lorahf import init as starter
    from lorahf import recipe as recipes

    target = Path(out)
    if target.exists() and not force:
        raise LorahfError(f"{out} exists; lorahf init does not replace it", hint="add --force, or give --out NEW.yaml")
    found = starter.inspect_files(starter.data_files(list(files)))
    asking = sys.stdin.isatty() and sys.stdout.isatty()
    for guess in found:
        for role, options in list(guess.ambiguous.items()):
            if asking and role in guess.roles and len(options) > 1:
                console.print(f"{guess.path}: which column holds the [bold]{role}[/bold]? "
                              + ", ".join(f"{o} (e.g. {_cell(guess.preview[0].get(o))})" for o in options))
                guess.choose(role, click.prompt("column", type=click.Choice(options), default=guess.roles[role]))
    console.print(_init_table(found))
    text = starter.recipe_text(found, base, name or target.stem, target)
    from lorahf.runs import write_text

    write_text(target, text)
    recipes.load(target)  # a recipe init writes always validates
    lines = text.splitlines()
    for line in lines[lines.index(starter.GUESSES) + 1:] if starter.GUESSES in lines else []:
        console.print(f"[yellow]check[/yellow] {escape(line.removeprefix('#   '))}", highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{out}[/bold]; next: [bold]lorahf validate {out}[/bold], then "
                  f"[bold]lorahf plan {out} --gpu-memory 12GiB[/bold] and [bold]lorahf run {out}[/bold]")


def _cell(value, width: int = 40) -> str:
    text = " ".join(str(value).split())
    return escape(text if len(text) <= width else text[:width - 1] + "…")


def _init_table(found) -> Table:
    from lorahf.init import PURPOSES

    table = Table(title="what lorahf init found", header_style="bold", show_lines=True)
    for column in ("file", "rows", "read as", "columns", "first row"):
        table.add_column(column, overflow="fold")
    order = ("prompt", "response", "chosen", "rejected", "responses", "ranking", "score", "reference")
    for guess in found:
        roles = sorted(guess.roles.items(), key=lambda item: order.index(item[0]))
        columns = "\n".join(f"{role} = {name}" + (" [yellow](guess)[/yellow]" if role in guess.ambiguous else "")
                            for role, name in roles)
        first = "\n".join(f"{name}: {_cell(guess.preview[0].get(name))}" for _, name in roles)
        table.add_row(escape(guess.path), str(guess.rows), PURPOSES[guess.shape], columns, first)
    return table


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--stage", help="Run (or rerun) only this stage.")
@click.option("--from", "from_stage", help="Rerun from this stage on.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set sft.learning_rate=5e-4 (repeatable).")
@click.option("--force", is_flag=True, help="Rerun finished stages whose settings changed, replacing their outputs.")
@friendly
def run(recipe: str, stage: str | None, from_stage: str | None, overrides: tuple[str, ...], force: bool) -> None:
    """Run a recipe's stages; finished stages are skipped, so rerunning resumes.

    \b
    Example:
      lorahf run recipes/quickstart.yaml --set sft.max_steps=50
    """
    from lorahf import distributed
    from lorahf.pipeline import run as run_pipeline
    from lorahf.progress import Progress, RichProgress

    progress = RichProgress(errors) if distributed.is_main() else Progress()  # one progress display, not one each
    result = run_pipeline(recipe, stage=stage, from_stage=from_stage, overrides=list(overrides),
                          progress=progress, force=force)
    if not distributed.is_main():
        return
    console.print(_summary_table(result))
    console.print(f"run folder: [bold]{result.folder.root}[/bold]   report: [bold]{result.report}[/bold]")


@main.command("eval")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--adapter", "adapters", multiple=True,
              help="Adapters to answer, the first the baseline (repeatable; default: the recipe's, else sft and policy).")
@click.option("--judge", "judges", multiple=True, help="Judges to compare with (repeatable; default: all but people).")
@friendly
def evaluate(run_dir: str, adapters: tuple[str, ...], judges: tuple[str, ...]) -> None:
    """Evaluate a run's adapters on held-out prompts: ROUGE, BLEU, METEOR, reward, KL, judged win rates.

    \b
    Example:
      lorahf eval runs/quickstart --adapter sft --adapter policy --adapter policy-last
    """
    from lorahf.pipeline import evaluate as evaluate_run
    from lorahf.progress import RichProgress

    result = evaluate_run(run_dir, list(adapters) or None, list(judges) or None, progress=RichProgress(errors))
    console.print(_summary_table(result))
    console.print(f"report: [bold]{result.report}[/bold]")


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--judge", "judge_name", required=True, help="A judge of the run's recipe (a person, too), or reward.")
@click.option("--a", "a", default="sft", show_default=True, help="One adapter whose answers are judged.")
@click.option("--b", "b", default="policy", show_default=True, help="The other adapter.")
@click.option("--n", "n", default=50, show_default=True, help="Held-out prompts to judge.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Preference JSONL to append to (the reward stage reads it; judging resumes from it).")
@friendly
def judge(run_dir: str, judge_name: str, a: str, b: str, n: int, out: str) -> None:
    """Judge two adapters' answers; every verdict becomes a preference row for the next reward model.

    \b
    Example:
      lorahf judge runs/quickstart --judge human --a sft --b policy --n 50 --out prefs.round2.jsonl
    """
    from lorahf.pipeline import judge as judge_run
    from lorahf.progress import RichProgress

    counts = judge_run(run_dir, judge_name, a, b, n, out, progress=RichProgress(errors))
    console.print(f"{counts['total_judged']} judged in [bold]{out}[/bold] "
                  + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if k != "total_judged")
                  + " this time")


def _web_options(command):
    """--host, --port and --open, as `label` and `report --serve` take them."""
    command = click.option("--open/--no-open", "open_browser", default=True, show_default=True,
                           help="Open the page in this machine's browser, where it has one.")(command)
    command = click.option("--port", default=0, show_default=True, help="Port to listen on (0: any free one).")(command)
    host = click.option("--host", default="127.0.0.1", show_default=True,
                        help="Address to listen on. Another than 127.0.0.1 lets other machines in (with the token).")
    return host(command)


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--serve", is_flag=True, help="Also serve it as a web page, with the metrics live while a run goes on.")
@_web_options
@friendly
def report(run_dir: str, serve: bool, host: str, port: int, open_browser: bool) -> None:
    """Write RUN/report.md and its plots from what the run has done so far; with --serve, show it in the browser.

    \b
    Examples:
      lorahf report runs/quickstart
      lorahf report runs/quickstart --serve      # the report and live metrics at http://127.0.0.1:PORT/report
    """
    from lorahf.report import write_report
    from lorahf.runs import RunFolder, load_run

    if serve:
        from lorahf.web import Server

        _serve(Server(load_run(run_dir).run_dir, None, host, port), open_browser)
        return
    path = write_report(RunFolder(load_run(run_dir).run_dir))
    console.print(f"report: [bold]{path}[/bold]")


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--a", "a", help="One side of each pair: an adapter of evaluate's answers, or 'reference' "
              "(default: the first challenger, e.g. policy).")
@click.option("--b", "b", help="The other side (default: the baseline, e.g. sft; or the references).")
@click.option("--prompts", type=click.Path(dir_okay=False), help="Sample fresh answers for the prompts of this "
              "JSONL/JSON/CSV/Parquet file instead (the next round's data).")
@click.option("--column", default="prompt", show_default=True, help="With --prompts: the file's prompt column.")
@click.option("--max-prompts", type=int, help="With --prompts: the file's first N prompts only.")
@click.option("--adapter", default="policy", show_default=True, help="With --prompts: the adapter that answers.")
@click.option("--answers", default=2, show_default=True, help="With --prompts: answers per prompt (all paired).")
@click.option("--temperature", default=1.0, show_default=True, help="With --prompts: sampling temperature.")
@click.option("--name", help="Labels go to RUN/labels/NAME.jsonl (default: from the pairs, e.g. policy-vs-sft).")
@click.option("--per-item", default=1, show_default=True, help="Annotators per pair; 2 or more measures agreement.")
@_web_options
@friendly
def label(run_dir: str, a: str | None, b: str | None, prompts: str | None, column: str, max_prompts: int | None,
          adapter: str, answers: int, temperature: float, name: str | None, per_item: int, host: str, port: int,
          open_browser: bool) -> None:
    """Label pairs of answers in your browser, blind and side by side; every choice is a preference row.

    \b
    Examples:
      lorahf label runs/quickstart                       # evaluate's answers: policy vs sft
      lorahf label runs/quickstart --prompts prompts.jsonl --max-prompts 100 --adapter policy --answers 2
    Then list RUN/labels/NAME.jsonl under reward.data.files and rerun the reward stage and ppo.
    """
    from lorahf.label import prepare
    from lorahf.progress import RichProgress
    from lorahf.web import Server, need_web

    need_web()  # before any answer is sampled
    labels = prepare(run_dir, name=name, a=a, b=b, prompts=prompts, column=column, max_prompts=max_prompts,
                     adapter=adapter, answers=answers, temperature=temperature, per_item=per_item,
                     progress=RichProgress(errors))
    found = labels.progress()
    console.print(f"{found['items']} pairs ({escape(labels.source)}); labels go to [bold]{labels.path}[/bold] "
                  f"({found['labelled']} of {found['total']} there already)")
    _serve(Server(run_dir, labels, host, port), open_browser)
    found = labels.progress()
    agreement = (f", agreement {found['agreement']:.0%} on {found['shared_items']} shared pairs"
                 if found["agreement"] is not None else "")
    console.print(f"{found['labelled']} of {found['total']} labelled in [bold]{labels.path}[/bold]{agreement}")


def _serve(server, open_browser: bool) -> None:
    """Print the address (and open it where this machine has a browser), serve until Ctrl-C."""
    import os
    import webbrowser

    if server.host not in ("127.0.0.1", "localhost", "::1"):
        errors.print(f"[yellow]listening on {server.host}[/yellow]: anyone who can reach it and has the address "
                     "(with its token) can use the page")
    saved = "; every choice is saved as it is made" if server.labels is not None else ""
    console.print(f"open [bold]{server.address}[/bold]  (Ctrl-C stops{saved})", soft_wrap=True)
    has_display = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if open_browser and has_display:
        webbrowser.open(server.address)
    server.serve()


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--no-data", is_flag=True, help="Check the recipe only, without reading its data files.")
@click.option("--explain", is_flag=True, help="Print every recipe key with its type, default and meaning (Markdown).")
@friendly
def validate(recipe: str | None, overrides: tuple[str, ...], no_data: bool, explain: bool) -> None:
    """Check a recipe (and its data files) without running anything.

    \b
    Examples:
      lorahf validate recipes/quickstart.yaml
      lorahf validate --explain          # the recipe reference, as in docs/recipe.md
    """
    from lorahf import recipe as recipes
    from lorahf.pipeline import describe

    if explain:
        click.echo(recipes.reference(), nl=False)
        return
    if recipe is None:
        raise click.UsageError("Missing argument 'RECIPE'.")

    loaded = recipes.load(recipe, list(overrides))
    table = Table(title=f"{recipe}: valid", show_header=True, header_style="bold")
    for column in ("stage", "what runs", "data"):
        table.add_column(column, overflow="fold")  # wrap long file paths instead of cutting them with "…"
    for row in describe(loaded, read_data=not no_data):
        table.add_row(*row)
    console.print(table)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--gpu-memory", default=None, help="The card's memory, e.g. 12GiB or 24GB: say per stage whether it "
              "fits, and what to change where it does not.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@friendly
def plan(recipe: str, gpu_memory: str | None, overrides: tuple[str, ...]) -> None:
    """Predict each stage's peak GPU memory from the model's config alone (no weights are read).

    \b
    Example:
      lorahf plan recipes/flan-t5-xl.yaml --gpu-memory 12GiB
    """
    from lorahf import recipe as recipes
    from lorahf.plan import GIB, MERGED_COPY, REWARD_MODEL, advise, needed, parse_memory, plan as plan_memory

    loaded = recipes.load(recipe, list(overrides))
    budget = parse_memory(gpu_memory) if gpu_memory else None
    stages = plan_memory(loaded)
    table = Table(title=f"{recipe}: {loaded.model.name}, {loaded.model.quantization}, prompts {loaded.max_prompt_tokens}"
                        f" + responses {loaded.max_response_tokens} tokens (GiB, peak per stage)", header_style="bold")
    columns = [("base", "base"), ("adapters", "adapters")]
    for part in (REWARD_MODEL, MERGED_COPY):  # parts only some recipes hold
        if any(part in stage.parts for stage in stages):
            columns.append((part, part))
    columns += [("training step", "step"), ("generation", "rollout")]
    for title in ("stage", *(title for title, _ in columns), "peak") + (("fits",) if budget else ()):
        table.add_column(title, justify="left" if title == "stage" else "right")
    advice = []
    for stage in stages:
        cells = [stage.stage] + [f"{stage.parts[k] / GIB:.2f}" if k in stage.parts else "-"
                                 for _, k in columns] + [f"{stage.total / GIB:.2f}"]
        if budget:
            fits = needed(stage) <= budget
            cells.append("[green]yes[/green]" if fits else "[red]no[/red]")
            if not fits:
                change = advise(loaded, stage, budget)
                advice.append(f"{stage.stage}: needs about {needed(stage) / GIB:.1f} GiB of the card's "
                              f"{budget / GIB:.1f}: " + (f"set {change}" if change else
                                                         "no single setting is enough; try a smaller base"))
        table.add_row(*cells)
    console.print(table)
    for line in advice:
        console.print(line, highlight=False, soft_wrap=True)
    console.print("[dim]Peaks of PyTorch's tensors on a GPU (bf16, memory-efficient attention), batches with "
                  "padding. A stage fits when the card holds its peak + 10 % + 0.5 GiB for CUDA itself. "
                  "BENCHMARKS.md compares predictions with measured peaks.[/dim]")


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--adapter", default="policy", show_default=True,
              help="The adapter to merge: sft, policy, policy-last, ...; reward for a reward model on its own encoder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the merged model.")
@friendly
def merge(run_dir: str, adapter: str, out: str) -> None:
    """Merge an adapter into the unquantized base; save a plain transformers model and check it answers alike.

    \b
    Example:
      lorahf merge runs/quickstart --adapter policy --out merged/quickstart-policy
    """
    from lorahf.merge import LOGIT_TOLERANCE, merge as merge_run
    from lorahf.progress import RichProgress

    result = merge_run(run_dir, adapter, out, progress=RichProgress(errors))
    console.print(f"[green]✓[/green] merged '{result.adapter}' into [bold]{result.out}[/bold]: "
                  f"{result.identical} of {result.prompts} {result.checked}, "
                  f"max logit difference {result.max_logit_difference:.1e} (tolerance {LOGIT_TOLERANCE:g})")


@main.command()
@click.argument("target", metavar="TARGET", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", "prompt_text", help="One prompt.")
@click.option("--file", "prompt_file", type=click.Path(dir_okay=False), help="A JSONL/JSON/CSV/Parquet file of prompts.")
@click.option("--column", default="prompt", show_default=True, help="The file's prompt column.")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write JSONL rows {prompt, response} here.")
@click.option("--adapter", default="policy", show_default=True, help="With a run folder: the adapter to answer with.")
@click.option("--max-new-tokens", type=int, help="Answer length limit (default: the run's max_response_tokens).")
@click.option("--temperature", type=float, help="Sample at this temperature (default: greedy).")
@click.option("--top-k", type=int, default=0, show_default=True, help="With --temperature: sample from the k likeliest.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of sampling.")
@friendly
def generate(target: str, prompt_text: str | None, prompt_file: str | None, column: str, out: str | None, adapter: str,
             max_new_tokens: int | None, temperature: float | None, top_k: int, batch_size: int, seed: int) -> None:
    """Answer prompts with a run's adapter (TARGET = run folder) or a merged model (TARGET = its folder).

    \b
    Examples:
      lorahf generate runs/quickstart --adapter policy --prompt "Falcons beat Tigers 3 to 1 in Leeds ..."
      lorahf generate merged/quickstart-policy --file prompts.jsonl --out answers.jsonl
    """
    import json

    from lorahf.generate import Sampling, generate as generate_answers, read_prompts
    from lorahf.progress import RichProgress

    if (prompt_text is None) == (prompt_file is None):
        raise LorahfError("give exactly one of --prompt TEXT or --file PROMPTS")
    prompts = [prompt_text] if prompt_text is not None else read_prompts(prompt_file, column)
    sampling = Sampling(max_new_tokens, temperature, top_k, batch_size)
    answers = generate_answers(target, prompts, adapter, sampling, seed, progress=RichProgress(errors))
    if out:
        from lorahf.runs import write_text

        write_text(Path(out), "".join(json.dumps({"prompt": p, "response": a}, ensure_ascii=False) + "\n"
                                      for p, a in zip(prompts, answers)))
        console.print(f"{len(answers)} answers written to [bold]{out}[/bold]")
    else:
        for answer in answers:
            console.print(answer, highlight=False, markup=False)


@main.command("make-tiny")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of JSONL/JSON/CSV/Parquet files whose text trains the tokenizer.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Where to save the model.")
@click.option("--family", type=click.Choice(["seq2seq", "causal", "encoder"]), default="seq2seq", show_default=True,
              help="seq2seq: a Flan-T5-shaped T5; causal: a Llama-shaped decoder (as SmolLM2), with a chat template; "
                   "encoder: a BERT-shaped masked LM, the base of a reward model (as bert-base-cased).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialisation.")
@click.option("--vocab-size", default=512, show_default=True, help="BPE vocabulary size.")
@friendly
def make_tiny(data_dir: str, out_dir: str, family: str, seed: int, vocab_size: int) -> None:
    """Build an offline tiny base (tokenizer trained on DATA, random weights), deterministically: a T5 (with
    position heads), with --family causal a Llama-shaped decoder, or with --family encoder a BERT-shaped encoder.

    \b
    Examples:
      lorahf make-tiny --data examples/summaries/data --out models/tiny-t5
      lorahf make-tiny --data examples/summaries/data --out models/tiny-llama --family causal
      lorahf make-tiny --data examples/summaries/data --out models/tiny-bert --family encoder
    """
    from dataclasses import replace

    from lorahf.tiny import make_tiny as build, spec_for

    path = build(data_dir, out_dir, replace(spec_for(family), seed=seed, vocab_size=vocab_size))
    kind = {"seq2seq": "tiny T5", "causal": "tiny Llama", "encoder": "tiny BERT"}[family]
    console.print(f"{kind} ({family}) saved to [bold]{path}[/bold]; load it like any model: model.name: {path}")


def _summary_table(result) -> Table:
    from lorahf.backbone import describe_bytes
    from lorahf.report import checks

    table = Table(title=f"lorahf run: {result.folder.root}", header_style="bold")
    for column in ("stage", "", "check", "evidence"):
        table.add_column(column)
    for check in checks(result.metrics):
        mark = "-" if check.passed is None else "[green]✓[/green]" if check.passed else "[red]✗[/red]"
        status = " (done before)" if check.stage in result.skipped else ""
        hint = f"\n[dim]{escape(check.hint)}[/dim]" if check.passed is False and check.hint else ""
        table.add_row(check.stage + status, mark, check.claim, escape(check.evidence) + hint)
    memory = result.memory
    if memory and len(memory["adapter_bytes"]) > 1:
        roles = ", ".join(f"{r} {describe_bytes(b)}" for r, b in memory["adapter_bytes"].items())
        encoder = memory.get("reward_model")
        table.add_row("memory", "-", f"one base + {len(memory['adapter_bytes'])} adapters"
                      + (" + a reward encoder" if encoder else ""),
                      f"base {describe_bytes(memory['base_bytes'])}, {roles}: {memory['ratio']:.2f}x the "
                      "memory of separate models"
                      + (f"; reward model {encoder} {describe_bytes(memory['reward_model_bytes'])}" if encoder else ""))
    return table


if __name__ == "__main__":
    main()
