"""Can a tiny base learn who won? A probe of the tiny T5's position heads (lorahf.tiny.position_heads).

    python benchmarks/winner_probe.py                  # the tiny base as lorahf builds it, and with position_bias 0
    python benchmarks/winner_probe.py --steps 600

Each base is built from the bundled example (`make_tiny`, into a temporary folder) and gets a fresh LoRA (r16,
alpha 32, no dropout, on q, k, v, o, wi_0, wi_1, wo; lr 1e-3, batch 32). It trains on one thing only: the first
token of a summary of the SFT reports, which must be the winner (the reference summaries all start "{winner} beat
..."). Every 100 steps it reports on the 200 test reports how often the winner's logit is above the loser's at
that first token: 0.5 is a base that cannot tell who won, 1.0 one that always can. Both teams are in every report,
so only their places in it tell them apart (e.g. "Tigers won 3-1 against Rangers", "Rangers hosted Tigers").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "summaries"))
DATA = REPO / "examples" / "summaries" / "data"
BATCH = 32


def reports(name: str) -> tuple[list[str], list[str], list[str]]:
    """The file's reports with their winners and losers (read back by the gold judge)."""
    import gold

    documents = [json.loads(line)["document"] for line in (DATA / name).read_text().splitlines()]
    facts = [gold.facts(d) for d in documents]
    return documents, [f["winner"] for f in facts], [f["loser"] for f in facts]


def probe(model_dir: Path, steps: int, seed: int) -> list[tuple[int, float, float]]:
    """(step, accuracy on the test reports, seconds) every 100 steps."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(model_dir),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                      target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train, train_winners, _ = reports("sft.jsonl")
    test, winners, losers = reports("test.jsonl")

    def first_logits(documents: list[str]) -> torch.Tensor:
        encoded = tokenizer([f"summarize: {d}" for d in documents], return_tensors="pt", padding=True)
        start = torch.zeros(len(documents), 1, dtype=torch.long)  # T5's decoder start token
        return model(**encoded, decoder_input_ids=start).logits[:, 0]

    def piece(team: str) -> int:
        return tokenizer(team).input_ids[0]  # every team is one piece (then </s>)

    results, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        rows = rng.sample(range(len(train)), BATCH)
        logits = first_logits([train[i] for i in rows])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([piece(train_winners[i]) for i in rows]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                logits = first_logits(test)
            rows = torch.arange(len(test))
            right = logits[rows, [piece(w) for w in winners]] > logits[rows, [piece(team) for team in losers]]
            results.append((step, right.float().mean().item(), time.perf_counter() - started))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sys.path.insert(0, str(REPO))
    from lorahf.tiny import TinySpec, make_tiny

    print("| tiny base | " + " | ".join(f"step {s}" for s in range(100, args.steps + 1, 100)) + " |")
    print("|---|" + "---|" * (args.steps // 100))
    for label, spec in (("as lorahf builds it (position heads, strength 10)", TinySpec()),
                        ("position_bias 0 (T5's random init, std ~0.08)", TinySpec(position_bias=0.0))):
        with tempfile.TemporaryDirectory() as folder:
            model_dir = make_tiny(DATA, Path(folder) / "tiny", spec)
            results = probe(model_dir, args.steps, args.seed)
        print(f"| {label} | " + " | ".join(f"{accuracy:.3f}" for _, accuracy, _ in results) + " |", flush=True)


if __name__ == "__main__":
    main()
