"""What size of tiny Llama learns the bundled example in minutes on 2 CPU cores? (LoRA SFT on a random base)

    python benchmarks/tiny_causal_size.py                                  # lorahf.tiny.TinyCausalSpec() for 5 minutes
    python benchmarks/tiny_causal_size.py --hidden 256 --layers 4 --ff 1024 --minutes 5
    python benchmarks/tiny_causal_size.py --tied --8bit --minutes 2

Plain transformers + peft, on purpose (not lorahf's stages): the base is built by `lorahf.tiny.make_tiny` with a
`TinyCausalSpec` into a temporary folder and loaded back with `AutoModelForCausalLM.from_pretrained`, in fp32 (or
8-bit through bitsandbytes with --8bit). A fresh LoRA (r16, alpha 32, no dropout, on q, k, v, o, gate, up and down
projections; AdamW lr 1e-3 constant, gradient norm clipped at 1.0) trains on random batches of 16 rows of
examples/summaries/data/sft.jsonl. Each row is BOS + prompt + response + EOS, where the prompt is
"{document}\\nTL;DR:" (--prompt summarize: "summarize: {document}") and the response the row's summary; the loss
covers the response and its EOS only.

Every --eval-every seconds of training (evaluation time not counted) it greedy-decodes summaries of the first 100
reports of test.jsonl (a left-padded batch; generate takes the position ids from the attention mask) and prints the
mean gold score (examples/summaries/gold.py: the reference scores 6, the SFT data's own responses about 2.25, an
untrained model about -1) and, of the summaries that name a winner, how often it is the right team ("winner
right"): a base blind to word order stays near 0.5 there (see benchmarks/winner_probe.py for the T5's case).
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples" / "summaries"))
DATA = REPO / "examples" / "summaries" / "data"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = {"tldr": "{document}\nTL;DR:", "summarize": "summarize: {document}"}
EVAL_REPORTS = 100
MAX_NEW_TOKENS = 24  # the reference summaries are about 12 tokens


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input ids, labels): BOS + prompt (masked) + response + EOS (learned)."""
    prompt_ids = tokenizer(prompt).input_ids  # BOS + prompt: the tokenizer prepends BOS and appends nothing
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def collate_right(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id)
    labels = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, :len(ids)], labels[i, :len(lab)], mask[i, :len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], pad_id: int) -> list[str]:
    """Greedy summaries of a left-padded batch of prompts."""
    encoded = [tokenizer(p).input_ids for p in prompts]
    width = max(map(len, encoded))
    input_ids = torch.full((len(encoded), width), pad_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids):], mask[i, width - len(ids):] = torch.tensor(ids), 1
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    return [tokenizer.decode(o[width:], skip_special_tokens=True).strip() for o in out]


def evaluate(model, tokenizer, template: str, pad_id: int) -> tuple[float, float | None, float, str]:
    """(mean gold score, winner right among summaries naming one, seconds, first summary)."""
    import gold

    test = rows("test.jsonl")[:EVAL_REPORTS]
    model.eval()
    started = time.perf_counter()
    summaries = greedy(model, tokenizer, [template.format(document=r["document"]) for r in test], pad_id)
    seconds = time.perf_counter() - started
    model.train()
    scores = [gold.score(r["document"], s) for r, s in zip(test, summaries)]
    right = wrong = 0
    for r, s in zip(test, summaries):
        parts = gold.breakdown(r["document"], s)
        right += "winner" in parts
        wrong += "loser_as_winner" in parts
    return sum(scores) / len(scores), (right / (right + wrong) if right + wrong else None), seconds, summaries[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=None, help="hidden_size (default: TinyCausalSpec's)")
    parser.add_argument("--ff", type=int, default=None, help="intermediate_size")
    parser.add_argument("--layers", type=int, default=None, help="num_hidden_layers")
    parser.add_argument("--heads", type=int, default=None, help="num_attention_heads")
    parser.add_argument("--kv-heads", type=int, default=None, help="num_key_value_heads")
    parser.add_argument("--tied", action="store_true", help="tie the LM head to the embeddings")
    parser.add_argument("--8bit", dest="eight_bit", action="store_true", help="load the base in 8-bit (bitsandbytes)")
    parser.add_argument("--prompt", choices=sorted(PROMPTS), default="tldr")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time, evaluation not counted")
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from dataclasses import replace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    from lorahf.tiny import TinyCausalSpec, make_tiny

    hf_logging.disable_progress_bar()
    spec = TinyCausalSpec()
    changes = {"hidden_size": args.hidden, "intermediate_size": args.ff, "num_hidden_layers": args.layers,
               "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads}
    spec = replace(spec, tie_word_embeddings=args.tied, **{k: v for k, v in changes.items() if v is not None})
    template = PROMPTS[args.prompt]
    with tempfile.TemporaryDirectory() as folder:
        model_dir = make_tiny(DATA, Path(folder) / "tiny-llama", spec)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        quantization = BitsAndBytesConfig(load_in_8bit=True) if args.eight_bit else None
        base = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization)
    parameters = sum(p.numel() for p in base.parameters())
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    pad_id = tokenizer.eos_token_id  # the tokenizer has no pad token (as Llama); masks make the id irrelevant
    train = [encode_pair(tokenizer, template.format(document=r["document"]), r["summary"]) for r in rows("sft.jsonl")]

    print(f"spec {spec}\nbase {parameters / 1e6:.2f}M parameters ({'8-bit' if args.eight_bit else 'fp32'}), "
          f"LoRA {trainable / 1e3:.0f}k trainable, prompt {template!r}, "
          f"{sum(map(len, (ids for ids, _ in train))) / len(train):.0f} tokens per row", flush=True)
    score, winner, seconds, first = evaluate(model, tokenizer, template, pad_id)
    print("| minute | step | train loss | gold | winner right | s/step | eval s | first summary |\n|---|---|---|---|---|---|---|---|")
    print(f"| 0 | 0 | - | {score:.2f} | {winner if winner is None else f'{winner:.2f}'} | - | {seconds:.1f} | {first} |",
          flush=True)
    model.train()
    trained, step, losses, next_eval = 0.0, 0, [], args.eval_every
    while trained < args.minutes * 60:
        started = time.perf_counter()
        batch = collate_right([train[i] for i in rng.sample(range(len(train)), 16)], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        trained += time.perf_counter() - started
        step += 1
        losses.append(loss.item())
        if trained >= next_eval or trained >= args.minutes * 60:
            score, winner, seconds, first = evaluate(model, tokenizer, template, pad_id)
            recent = losses[-20:]
            print(f"| {trained / 60:.1f} | {step} | {sum(recent) / len(recent):.3f} | {score:.2f} | "
                  f"{winner if winner is None else f'{winner:.2f}'} | {trained / step:.3f} | {seconds:.1f} | {first} |",
                  flush=True)
            next_eval += args.eval_every


if __name__ == "__main__":
    main()
