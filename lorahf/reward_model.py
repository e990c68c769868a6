"""The reward model, in either of its two forms, behind one interface.

    adapter   the `reward` LoRA adapter and a scalar head on the shared base (the default): almost no memory
    encoder   `reward.model`: a sequence classifier on its own encoder (BERT, RoBERTa, DeBERTa...), with its own
              tokenizer, trained with LoRA (or fully), or already trained (`reward.train: false`)

The reward stage, PPO, evaluate, dpo's final comparison and the `reward` judge never ask which one they hold:

    reward = of_run(recipe, backbone, folder)       # None when the run has no reward model yet
    reward.score(prompts, responses)                # texts -> one centred score each
    reward(backbone, prompts, batch)                # the policy's tokens (a collated batch) -> [B] (PPO's scorer)

An encoder reads the prompt and the response as a text pair (its tokenizer's own pair format, e.g. [CLS] prompt
[SEP] response [SEP]) and its classifier's one logit is the score; PPO decodes the policy's tokens and re-tokenizes
them for it. It is loaded once per process (kept beside the Backbone) and saved under adapters/reward/ with
`reward_model.json`: which encoder, how it was tuned, and the centring offset subtracted from every score.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import torch

from lorahf import distributed, roles
from lorahf.errors import LorahfError
from lorahf.runs import atomic_path

ROLE = roles.REWARD
MARKER = "reward_model.json"  # beside an encoder reward model's weights: {model, tuning, offset}
SCORE_BATCH = 64
SMALL = 1_000_000_000  # parameters: an encoder below this is held unquantized when reward.quantization is auto
CLASSIFIER_MODULES = ["classifier", "score"]  # the heads peft trains whole (SEQ_CLS): never quantized

_beside: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Backbone -> its EncoderReward, one per process


def of_run(recipe, backbone, folder):
    """The run's reward model, loaded once per process: the encoder its folder names, else the `reward` adapter
    (loaded onto the backbone if needed); None when the run has none yet."""
    saved = folder.adapter_dir(ROLE)
    if (saved / MARKER).is_file():
        found = _beside.get(backbone)
        if found is None or found.folder != saved:
            found = EncoderReward.from_folder(saved, recipe, backbone.device)
            keep_beside(backbone, found)
        return found
    if not backbone.has_adapter(ROLE):
        if not saved.is_dir():
            return None
        backbone.load_adapter(ROLE, saved)
    return SharedReward(backbone, recipe)


def beside(backbone) -> EncoderReward | None:
    """The encoder reward model this process holds beside `backbone`, if any."""
    return _beside.get(backbone)


def keep_beside(backbone, reward: EncoderReward) -> None:
    """`reward` is this process's encoder reward model from now on (the reward stage hands over what it trained)."""
    _beside[backbone] = reward


# ------------------------------------------------------------------------------ on the shared base
class SharedReward:
    """The `reward` adapter and its scalar head on the shared base; items are (prompt ids, response ids) in the
    base's tokenizer, the prompt framed by the recipe's prompt format."""

    kind = "adapter"

    def __init__(self, backbone, recipe):
        self.backbone, self.recipe = backbone, recipe

    @property
    def holder(self):
        """What the adapter-training loop trains and saves (training.train_adapter)."""
        return self.backbone

    def tokenize(self, prompts: list[str], responses: list[str]) -> list[tuple[list[int], list[int]]]:
        from lorahf.data import encode_prompts, encode_responses

        recipe, tokenizer = self.recipe, self.backbone.tokenizer
        prompt_ids, _ = encode_prompts(tokenizer, prompts, recipe.max_prompt_tokens, recipe.prompt_format)
        response_ids, _ = encode_responses(tokenizer, responses, recipe.max_response_tokens)
        return list(zip(prompt_ids, response_ids))

    @staticmethod
    def tokens(item) -> int:
        return len(item[0]) + len(item[1])

    @staticmethod
    def group_length(items) -> int:
        """How long a group's batch rows are, to batch groups of similar length (prompt and responses pad apart)."""
        return len(items[0][0]) + 2 * max(len(response) for _, response in items)

    def forward(self, items) -> torch.Tensor:
        """[B] scores of one batch of items, in the caller's mode and gradient setting."""
        from lorahf.data import collate
        from lorahf.scoring import scores_of

        batch = collate([p for p, _ in items], [r for _, r in items], self.backbone.tokenizer.pad_token_id)
        return scores_of(self.backbone, ROLE, batch.to(self.backbone.device))

    def score_items(self, items, batch_size: int) -> torch.Tensor:
        from lorahf.scoring import score_batches

        return score_batches(self.backbone, ROLE, [p for p, _ in items], [r for _, r in items], batch_size)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.score_items(self.tokenize(prompts, responses), SCORE_BATCH).cpu().tolist()

    def __call__(self, backbone, prompts: list[str], batch) -> torch.Tensor:
        from lorahf.scoring import scores_of

        return scores_of(backbone, ROLE, batch)

    @property
    def offset(self) -> float:
        return self.backbone.head(ROLE).offset.item()

    @offset.setter
    def offset(self, value: float) -> None:
        self.backbone.head(ROLE).offset.fill_(value)

    def save(self, folder) -> None:
        self.backbone.save_adapter(ROLE, folder.adapter_dir(ROLE))

    def describe(self) -> str:
        return "the reward adapter on the shared base"


# ----------------------------------------------------------------------------------- on its own encoder
class EncoderReward:
    """A sequence classifier with one label on its own encoder, and its tokenizer; items are the tokenizer's pair
    encodings. For the adapter-training loop it is its own holder: one role (`reward`) that trains or not."""

    kind = "encoder"

    def __init__(self, model, tokenizer, name: str, tuning: str, device: torch.device, quantization: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.tuning = tuning  # lora | full | none (used as given)
        self.device, self.quantization = device, quantization
        self.offset = 0.0
        self.folder: Path | None = None  # where it was last saved or loaded from
        self.max_length = _max_length(tokenizer, model.config)
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self.set_trainable()

    # ---------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, name: str, spec, lora, base_quantization: str, device: torch.device, saved: Path | None = None,
             tuning: str | None = None) -> "EncoderReward":
        """`name` (a hub id or a folder) as a one-label classifier: with a fresh LoRA adapter (tuning lora), trainable
        in full (full), or as it is (none); `saved`: a folder written by `write_adapter` to load instead."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from lorahf.backbone import (_compute_dtype, _dequantize_int8_on_cpu, _first_line, _quantization_config,
                                     check_folder, quiet_libraries)

        quiet_libraries()
        tuning = tuning or ("none" if not spec.train else "full" if spec.full_finetune else "lora")
        check_folder(name)
        try:
            config = AutoConfig.from_pretrained(name)
            check_classifier(name, config, trained=tuning == "none" and saved is None)
            tokenizer = AutoTokenizer.from_pretrained(saved if tuning == "full" and saved else name)
            quantization = resolve_quantization(spec.quantization, config, base_quantization)
            held = _quantization_config(quantization, device)
            if held is not None:  # peft's trainable copy of an int8 classifier cannot run: keep the head unquantized
                held.llm_int8_skip_modules = CLASSIFIER_MODULES
            model = AutoModelForSequenceClassification.from_pretrained(
                saved if tuning == "full" and saved else name, num_labels=1, dtype=_compute_dtype(device),
                device_map={"": str(device)}, quantization_config=held)
        except (OSError, ValueError) as error:
            raise LorahfError(f"reward.model {name}: cannot load it ({_first_line(error)})") from None
        if tokenizer.pad_token is None:
            raise LorahfError(f"reward.model {name}: its tokenizer has no pad token, so pairs cannot be batched",
                              hint="give an encoder whose tokenizer pads (BERT, RoBERTa and DeBERTa all do)")
        model.config.pad_token_id = tokenizer.pad_token_id
        for parameter in model.parameters():
            parameter.requires_grad_(tuning == "full")
        _dequantize_int8_on_cpu(model, quantization, device)
        if tuning == "lora":
            model = with_lora(model, lora, saved)
        reward = cls(model, tokenizer, name, tuning, device, quantization)
        if saved is not None:
            reward.offset = json.loads((saved / MARKER).read_text())["offset"]
            reward.folder = saved
        return reward

    @classmethod
    def from_folder(cls, folder: Path, recipe, device: torch.device, quantization: str | None = None) -> "EncoderReward":
        """The reward model a reward stage saved in `folder` (its `reward_model.json` says which encoder and how);
        `quantization` overrides the recipe's (merge loads it unquantized)."""
        marker = json.loads((folder / MARKER).read_text())
        spec = recipe.reward if quantization is None else recipe.reward.model_copy(update={"quantization": quantization})
        return cls.load(marker["model"], spec, recipe.lora.reward, recipe.model.quantization, device, saved=folder,
                        tuning=marker["tuning"])

    # ---------------------------------------------------------------------------------- scoring
    def tokenize(self, prompts: list[str], responses: list[str]) -> list[dict]:
        """One pair encoding per (prompt, response); the longer text is cut first past the encoder's limit."""
        encoded = self.tokenizer(prompts, [r.strip() for r in responses], truncation=True, max_length=self.max_length)
        return [{key: encoded[key][i] for key in encoded} for i in range(len(prompts))]

    @staticmethod
    def tokens(item) -> int:
        return len(item["input_ids"])

    @staticmethod
    def group_length(items) -> int:
        """How many tokens a group's rows take once padded together (to batch groups of similar length)."""
        return len(items) * max(len(item["input_ids"]) for item in items)

    def forward(self, items) -> torch.Tensor:
        """[B] scores (offset subtracted) of one batch of items, in the caller's mode and gradient setting."""
        batch = self.tokenizer.pad(items, return_tensors="pt").to(self.device)
        return self.model(**batch).logits[:, 0].float() - self.offset

    @torch.inference_mode()
    def score_items(self, items, batch_size: int) -> torch.Tensor:
        self.model.eval()
        scores = [self.forward(items[start:start + batch_size]) for start in range(0, len(items), batch_size)]
        return torch.cat(scores) if scores else torch.zeros(0, device=self.device)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.score_items(self.tokenize(prompts, responses), SCORE_BATCH).cpu().tolist()

    def __call__(self, backbone, prompts: list[str], batch) -> torch.Tensor:
        """PPO's scorer: the policy's tokens decoded with the base's tokenizer, re-tokenized for the encoder."""
        texts = backbone.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        return torch.tensor(self.score(prompts, texts), dtype=torch.float32, device=batch.response_ids.device)

    # ------------------------------------------- what the adapter-training loop asks of a holder
    @property
    def holder(self) -> "EncoderReward":
        return self

    def parameters(self, role: str) -> list[torch.nn.Parameter]:
        return list(self._trainable)

    def set_trainable(self, *trainable: str) -> None:
        for parameter in self._trainable:
            parameter.requires_grad_(ROLE in trainable)

    def use(self, role: str) -> "EncoderReward":
        return self

    def save_adapter(self, role: str, folder: Path) -> Path:
        distributed.first_writes(lambda: self.write_adapter(role, Path(folder)))
        self.folder = Path(folder)
        return self.folder

    def write_adapter(self, role: str, folder: Path) -> None:
        """A LoRA adapter folder (peft's, the classifier included), or the whole classifier and its tokenizer
        (full), or nothing but the marker (none); always `reward_model.json`."""
        with atomic_path(folder) as temp:
            temp.mkdir()
            if self.tuning == "lora":
                self.model.save_pretrained(str(temp))
            elif self.tuning == "full":
                self.model.save_pretrained(str(temp))
                self.tokenizer.save_pretrained(str(temp))
            (temp / MARKER).write_text(json.dumps({"model": self.name, "tuning": self.tuning, "offset": self.offset},
                                                  indent=1) + "\n")

    def load_adapter(self, role: str, folder: Path) -> None:
        """Put the weights saved in `folder` back into the live model (the best one, or a checkpoint's)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if self.tuning == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors"),
                                                            device=str(self.device)))
        elif self.tuning == "full":  # one file: save_pretrained shards only past 50 GB
            missing, _ = self.model.load_state_dict(load_file(str(folder / "model.safetensors"),
                                                              device=str(self.device)), strict=False)
            tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})
            if set(missing) - tied:
                raise LorahfError(f"{folder}: not this reward model's weights (missing {sorted(missing)[:3]})")
        self.offset = json.loads((folder / MARKER).read_text())["offset"]
        self.folder = folder

    def save(self, folder) -> None:
        self.save_adapter(ROLE, folder.adapter_dir(ROLE))

    def memory_bytes(self) -> int:
        """Bytes of its weights and buffers (quantized weights as stored)."""
        from lorahf.backbone import _quant_state_bytes

        return sum(t.numel() * t.element_size() + _quant_state_bytes(t)
                   for t in list(self.model.parameters()) + list(self.model.buffers()))

    def describe(self) -> str:
        how = {"lora": "with a LoRA adapter", "full": "fine-tuned in full", "none": "as given"}[self.tuning]
        return f"{self.name} ({self.model.config.model_type}, {self.quantization}) {how}"


def check_model(name: str, trained: bool) -> None:
    """Refuse, without reading any weights, what `EncoderReward.load` would refuse (see `check_classifier`)."""
    from transformers import AutoConfig

    from lorahf.backbone import _first_line, check_folder, quiet_libraries

    quiet_libraries()
    try:
        check_folder(name)
        config = AutoConfig.from_pretrained(name)
    except LorahfError as error:
        raise LorahfError(f"reward.model {error.message}", hint=error.hint) from None
    except (OSError, ValueError) as error:
        raise LorahfError(f"reward.model {name}: cannot load it ({_first_line(error)})") from None
    check_classifier(name, config, trained)


def check_classifier(name: str, config, trained: bool) -> None:
    """Refuse in one line what cannot be a one-score reward model: a language model of the shared base's kinds, a
    type transformers has no sequence classifier for, a classifier with several labels, and (when `trained`, i.e.
    used as given) a checkpoint without a trained classifier."""
    from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    from lorahf.families import family_of

    kind = family_of(config)
    if kind is not None:
        shape = "an encoder-decoder" if config.is_encoder_decoder else "a decoder-only"
        raise LorahfError(f"reward.model {name}: is {shape} language model ({config.model_type}); reward.model takes "
                          "an encoder classifier (BERT, RoBERTa, DeBERTa...)",
                          hint="leave reward.model out to train the reward model as an adapter on the shared base")
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise LorahfError(f"reward.model {name}: transformers has no sequence classifier for a {config.model_type}",
                          hint="give an encoder such as BERT, RoBERTa or DeBERTa")
    architectures = config.architectures or []
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if classifier and config.num_labels != 1:
        raise LorahfError(f"reward.model {name}: is a classifier with {config.num_labels} labels; a reward model "
                          "gives one score (num_labels 1)", hint="give a reward model, or the encoder it starts from")
    if trained and not classifier:
        raise LorahfError(f"reward.model {name}: is not a trained reward model (a {', '.join(architectures) or 'bare'}"
                          " checkpoint, no classifier)", hint="set reward.train: true to train one on it")


def resolve_quantization(choice: str, config, base_quantization: str) -> str:
    """`auto`: unquantized below SMALL parameters (a small encoder gains nothing from int8), else the base's."""
    if choice != "auto":
        return choice
    return "none" if parameter_count(config) < SMALL else base_quantization


def parameter_count(config) -> int:
    """The classifier's parameters, counted on the meta device (no weights read)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)  # its labels change the count by a few
    return sum(p.numel() for p in model.parameters())


def with_lora(model, lora, saved: Path | None):
    """A fresh LoRA adapter on every linear layer (peft keeps the classifier itself trainable and saved), or the
    one saved in `saved`."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if saved is not None:
        return PeftModel.from_pretrained(model, str(saved), is_trainable=True)
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=lora.r, lora_alpha=lora.alpha,
                                            lora_dropout=lora.dropout, target_modules=lora.target_modules))


def _max_length(tokenizer, config) -> int:
    """The longest pair the encoder reads: its tokenizer's limit, or its position table's when that is unset."""
    limit = tokenizer.model_max_length
    positions = getattr(config, "max_position_embeddings", None)
    if limit is None or limit > 1_000_000:  # transformers' "no limit" sentinel
        limit = positions or 512
    return min(limit, positions) if positions else limit
