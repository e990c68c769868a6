"""Use a trained adapter without lorahf: plain transformers + peft, as any deployment would.

    python examples/load_with_peft.py runs/quickstart policy "Bears claimed a 2-1 win over Owls in Leeds."

The adapter folder is a standard peft adapter; the base is the run's `model.name` (read from its recipe.yaml).
For a model with the adapter merged in, see `lorahf merge`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer


def main() -> None:
    run, adapter, prompt = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    base = recipe["model"]["name"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base), run / "adapters" / adapter).eval()
    text = recipe["prompt_template"].format(prompt=prompt)  # the prompt as the adapter was trained to see it
    inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=recipe["max_prompt_tokens"])
    output = model.generate(**inputs, max_new_tokens=recipe["max_response_tokens"], do_sample=False)
    print(tokenizer.decode(output[0], skip_special_tokens=True).strip())


if __name__ == "__main__":
    main()
