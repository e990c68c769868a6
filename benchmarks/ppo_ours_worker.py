"""lorahf's side of benchmarks/ppo_vs_trl.py: PPO iterations of `lorahf.stages.ppo.iterate`, timed.

    python benchmarks/ppo_ours_worker.py --model models/tiny-t5 \
        --data examples/summaries/data/prompts.jsonl --iterations 5 --warmup 1 --seed 0

The shape, the same as ppo_trl_worker.py's:
  model       the T5 in --model, loaded once by `Backbone.load(..., "8bit")`; LoRA adapters on it, each r16,
              alpha 32, dropout 0 on q, k, v, o, wi_0, wi_1, wo (`lorahf.recipe.LoraSpec()`): `sft` (the frozen
              reference), `reward` (frozen, with its scalar head) and `policy` (a copy of sft, trained); with
              --advantage gae also `value` (a copy of reward, head included, trained). The adapters are fresh
              (lora_B = 0), so every role starts as the base, as TRL's single adapter does. With rloo (the
              default) or grpo the 16 answers are 4 prompts answered 4 times; with gae, 16 prompts once.
  prompts     "summarize: {document}" for each row of --data, `encode_prompts(..., 48)`: the first 47 tokens
              and EOS. Batch i takes the 16 prompts from position 16 i on, wrapping around, warm-up first.
  generation  sampling, temperature 1, top_k 0, at most 32 new tokens, all 16 prompts in one batch, in eval
              mode (no dropout).
  reward      the `reward` adapter's forward pass and head (more work than TRL's rule on the text).
  update      `PPOStage` defaults: rloo, 2 epochs of minibatch 4 (--advantage gae: 4 epochs, as TRL's), separate
              learning rates, beta 0.05, train_encoder off: the decoder's adapters train, the encoders' outputs
              come from the rollout.
`torch.set_num_threads(2)`.

Prints one line of JSON last on stdout, in the protocol of ppo_trl_worker.py: seconds = generate + reward +
update per timed iteration, where "reward" is everything the frozen roles read (the reward's score, sft's
and the rollout policy's log-probs, the value's estimates) and "update" the epochs x 4 minibatch steps.
"""

from __future__ import annotations

import json
import resource
from importlib import metadata

from ppo_worker_args import worker_parser  # beside this script

BATCH = 16
THREADS = 2
TEMPLATE = "summarize: {prompt}"


def main() -> None:
    parser = worker_parser(__doc__.split("\n")[0])
    parser.add_argument("--train-encoder", action="store_true", help="train the encoders' adapters too (as TRL does)")
    parser.add_argument("--advantage", choices=("gae", "rloo", "grpo"), default=None,
                        help="ppo.advantage (default: PPOStage's, rloo): rloo and grpo answer each of 4 prompts 4 "
                             "times (16 answers, as gae's 16 prompts once each) and hold no value adapter")
    parser.add_argument("--epochs", type=int, default=None,
                        help="ppo.epochs (default: PPOStage's, 4 for gae and 2 for rloo and grpo)")
    parser.add_argument("--rollout-weights", choices=("quantized", "merged"), default="quantized",
                        help="ppo.rollout_weights: merged samples from an unquantized copy with the policy folded in")
    args = parser.parse_args()

    import torch

    from lorahf.backbone import Backbone
    from lorahf.data import encode_prompts
    from lorahf.reward_model import SharedReward
    from lorahf.ppo.rollout_weights import MergedPolicy
    from lorahf.ppo.update import make_optimizer
    from lorahf.recipe import DataSpec, LoraSpec, PPOStage
    from lorahf.stages.ppo import iterate

    torch.set_num_threads(THREADS)
    torch.manual_seed(args.seed)
    backbone = Backbone.load(args.model, quantization=args.quantization, device=args.device)
    lora = LoraSpec()
    backbone.add_adapter("sft", lora)
    backbone.add_adapter("reward", lora, head=True)
    backbone.copy_adapter("sft", "policy")
    chosen = {key: value for key, value in (("advantage", args.advantage), ("epochs", args.epochs)) if value}
    spec = PPOStage(data=DataSpec(files=[args.data]), batch_size=BATCH, minibatch_size=4, temperature=1.0, top_k=0,
                    train_encoder=args.train_encoder, rollout_weights=args.rollout_weights, **chosen)
    if spec.critic:
        backbone.copy_adapter("reward", "value")
    backbone.set_trainable(*spec.trained_roles)

    with open(args.data, encoding="utf-8") as handle:  # read as TRL's worker reads it: data loading is not timed
        texts = [json.loads(line)["document"] for line in handle if line.strip()]
    prompt_ids, _ = encode_prompts(backbone.tokenizer, texts, args.prompt_tokens, TEMPLATE)
    optimizer = make_optimizer(backbone, spec)
    scorer = SharedReward(backbone, None)  # the reward adapter (its __call__ needs no recipe)
    sampler = MergedPolicy(backbone) if args.rollout_weights == "merged" else None  # built before timing, once

    timed: list[dict] = []
    for i in range(args.warmup + args.iterations):
        prompts = BATCH // spec.answers  # each answered spec.answers times, consecutively
        rows_i = [(prompts * i + j) % len(texts) for j in range(prompts) for _ in range(spec.answers)]
        numbers = iterate(backbone, [prompt_ids[r] for r in rows_i], [texts[r] for r in rows_i], scorer, spec,
                          spec.beta, optimizer, torch.Generator().manual_seed(args.seed + i), args.new_tokens, i + 1,
                          sampler=sampler)
        if i >= args.warmup:
            timed.append(numbers)

    print(json.dumps({
        "name": "ours",
        "train_encoder": args.train_encoder,
        "advantage": args.advantage,
        "rollout_weights": args.rollout_weights,
        "seconds": [n["seconds"] for n in timed],
        "generate_seconds": [n["seconds_generate"] for n in timed],
        "reward_seconds": [n["seconds_score"] for n in timed],
        "update_seconds": [n["seconds_update"] for n in timed],
        "mean_response_tokens": sum(n["response_length"] for n in timed) / len(timed),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
        "device": args.device, "quantization": args.quantization,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for group in optimizer.param_groups for p in group["params"]),
        "versions": {name: _version(name) for name in
                     ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "lorahf")},
    }))


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # lorahf run from a checkout without being installed
        return None


if __name__ == "__main__":
    main()
