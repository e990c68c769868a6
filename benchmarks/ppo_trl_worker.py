"""TRL's side of benchmarks/ppo_vs_trl.py: PPO iterations of TRL 0.11.4's classic PPOTrainer, timed.

    benchmarks/.venv-trl/bin/python benchmarks/ppo_trl_worker.py --model models/tiny-t5 \
        --data examples/summaries/data/prompts.jsonl --iterations 5 --warmup 1 --seed 0

Runs in its own virtual environment (benchmarks/.venv-trl, made by ppo_vs_trl.py): trl 0.11.4, the last
release with `PPOTrainer` and `AutoModelForSeq2SeqLMWithValueHead`, beside the transformers, peft,
accelerate and bitsandbytes versions of the repository's .venv. It imports nothing from lorahf.

The shape, the same as ppo_ours_worker.py's:
  model       the T5 in --model, loaded 8-bit (`BitsAndBytesConfig(load_in_8bit=True)`, device_map cpu), then
              `AutoModelForSeq2SeqLMWithValueHead.from_pretrained(that model, peft_config=LoRA r16, alpha 32,
              dropout 0 on q, k, v, o, wi_0, wi_1, wo, use_gradient_checkpointing=False)`. Given a model
              object that is loaded in 8 bits, TRL calls `peft.prepare_model_for_kbit_training` with the
              keyword arguments that function takes, as a TRL user's 8-bit run does; its default would
              turn gradient checkpointing on (about twice the generation time), hence False. (Given a
              folder name and a `quantization_config` instead, 0.11.4 looks only for the old `load_in_8bit`
              keyword and skips that call.) ref_model=None: the reference is the policy with its adapter
              disabled, one more forward pass in each step.
  prompts     "summarize: {document}" for each row of --data (JSONL, column `document`), tokenized with the
              model's tokenizer (which appends EOS); a prompt longer than 48 tokens keeps its first 47 and
              EOS, a shorter one stays as it is (none of the example prompts is shorter). Batch i takes the
              16 prompts from position 16 i on, wrapping around, warm-up iterations first.
  generation  `PPOTrainer.generate` of all 16 prompts in one batch: sampling, temperature 1, top_k 0,
              top_p 1, at most 32 new tokens. TRL samples in train mode (dropout on) and cuts each response
              after its first EOS.
  reward      +1 per occurrence of the word "the" in the decoded response: a cheap rule, where ours runs a
              reward-model adapter's forward pass, so ours does more work per iteration than this.
  update      `PPOTrainer.step(queries, responses, rewards)`: batch 16, 4 PPO epochs of minibatch 4,
              gradient accumulation 1, the rest PPOConfig's defaults (Adam, lr 1.41e-5, adaptive KL).
`torch.set_num_threads(2)` (the parent also sets OMP_NUM_THREADS=MKL_NUM_THREADS=2).

Prints one line of JSON last on stdout: {"name": "trl", "seconds": [...], "generate_seconds": [...],
"reward_seconds": [...], "update_seconds": [...], "forward_seconds": [...], "optimize_seconds": [...],
"mean_response_tokens": ..., "peak_rss_mb": ..., "versions": {...}, ...}; one entry per timed iteration.
seconds = generate + reward + update, wall clock; forward and optimize are TRL's own split of the update
(its "time/ppo/forward_pass": the policy's and the reference's log-probs and values of the rollout, and
"time/ppo/optimize_step": the 4 x 4 minibatch steps). mean_response_tokens counts generated tokens per
response (EOS included, T5's decoder-start token not) over the timed iterations. peak_rss_mb is
`ru_maxrss` / 1024 of this process: imports, model, generation and training together.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import time
import warnings
from importlib import metadata

from ppo_worker_args import worker_parser  # beside this script

BATCH = 16
PPO_EPOCHS = 4
MINI_BATCH = 4
THREADS = 2
TEMPLATE = "summarize: {document}"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]}
THE = re.compile(r"\bthe\b", re.IGNORECASE)


def main() -> None:
    parser = worker_parser(__doc__.split("\n")[0])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # TRL 0.11.4 warns that PPOTrainer/PPOConfig are deprecated, and more
    # bitsandbytes logs "MatMul8bitLt: inputs will be cast ..." on every int8 matmul on the CPU (hundreds of
    # lines per iteration, a measurable cost); lorahf's Backbone silences it the same way.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # TRL's "device_map argument is not provided" (it is: on the base)

    import torch

    torch.set_num_threads(THREADS)
    import transformers
    from peft import LoraConfig
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig
    from trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer, set_seed

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    set_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = load_prompts(args.data, tokenizer, args.prompt_tokens)
    quantization = {"8bit": BitsAndBytesConfig(load_in_8bit=True), "none": None,
                    "4bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.bfloat16)}[args.quantization]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    base = AutoModelForSeq2SeqLM.from_pretrained(args.model, quantization_config=quantization,
                                                 device_map={"": args.device}, dtype=dtype)
    if args.quantization == "8bit":
        assert getattr(base, "is_loaded_in_8bit", False), "the base did not load in 8 bits"
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(
        base, peft_config=LoraConfig(task_type="SEQ_2_SEQ_LM", **LORA), use_gradient_checkpointing=False)
    assert model.is_peft_model, "TRL did not wrap the model with the LoRA adapter"
    t5 = model.pretrained_model.get_base_model()
    checkpointing = getattr(t5, "is_activation_checkpointing", None)  # transformers 5.x's name; 4.x's below
    assert not (t5.is_gradient_checkpointing if checkpointing is None else checkpointing), "checkpointing is on"
    config = PPOConfig(batch_size=BATCH, mini_batch_size=MINI_BATCH, ppo_epochs=PPO_EPOCHS,
                       gradient_accumulation_steps=1, seed=args.seed, log_with=None, exp_name="ppo_trl_worker")
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer)
    generation = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": args.new_tokens,
                  "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}

    phases = ("generate", "reward", "update", "forward", "optimize")
    timed = {"seconds": [], **{f"{phase}_seconds": [] for phase in phases}}
    response_tokens = []
    for iteration in range(args.warmup + args.iterations):
        start = iteration * BATCH
        queries = [prompts[(start + i) % len(prompts)] for i in range(BATCH)]
        t0 = time.perf_counter()
        responses = trainer.generate(queries, batch_size=BATCH, return_prompt=False, **generation)
        t1 = time.perf_counter()
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = [torch.tensor(float(len(THE.findall(text)))) for text in texts]
        t2 = time.perf_counter()
        stats = trainer.step(queries, responses, rewards)
        t3 = time.perf_counter()
        if iteration < args.warmup:
            continue
        for key, value in (("seconds", t3 - t0), ("generate_seconds", t1 - t0), ("reward_seconds", t2 - t1),
                           ("update_seconds", t3 - t2), ("forward_seconds", stats["time/ppo/forward_pass"]),
                           ("optimize_seconds", stats["time/ppo/optimize_step"])):
            timed[key].append(float(value))
        # Each response starts with T5's decoder-start token (not generated) and ends at its first EOS.
        response_tokens += [len(response) - 1 for response in responses]

    lengths = [len(p) for p in prompts]
    print(json.dumps({
        "name": "trl", **timed,
        "mean_response_tokens": sum(response_tokens) / len(response_tokens),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
        "device": args.device, "quantization": args.quantization, "new_tokens": args.new_tokens,
        "versions": {name: metadata.version(name) for name in
                     ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl")},
        "prompt_tokens": [min(lengths), max(lengths)], "batch_size": BATCH, "warmup": args.warmup,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gradient_checkpointing": False, "threads": torch.get_num_threads(),
    }))


def load_prompts(path: str, tokenizer, max_tokens: int) -> list:
    """Every row's prompt as a 1-D LongTensor: the template tokenized (with EOS), cut to max_tokens - 1 + EOS."""
    import torch

    with open(path, encoding="utf-8") as file:
        documents = [json.loads(line)["document"] for line in file if line.strip()]
    ids = tokenizer([TEMPLATE.format(document=d) for d in documents])["input_ids"]
    eos = tokenizer.eos_token_id
    cut = [list(i) if len(i) <= max_tokens else list(i[: max_tokens - 1]) + [eos] for i in ids]
    return [torch.tensor(i, dtype=torch.long) for i in cut]


if __name__ == "__main__":
    main()
