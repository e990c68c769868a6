"""The one shared base model, and every RLHF role as a LoRA adapter (plus a scalar head) on it.

RLHF needs a policy, a frozen reference, a reward model and a value model. Held as four models they
cost four times the memory; here the base is loaded **once** (8-bit by default) and each role is a
named peft adapter of a few MB. Running as a role is `backbone.use("reward")`, not a model load.

    backbone = Backbone.load("google/flan-t5-base", quantization="8bit")
    backbone.add_adapter("sft", LoraSpec())
    backbone.copy_adapter("sft", "policy")
    backbone.use("policy")

peft's `set_adapter` also flips `requires_grad` (only the active adapter trains), which silently zeroes
the gradient of an adapter that is switched away from before `backward()`. PPO trains two adapters in
one step, so the Backbone owns `requires_grad` itself: `set_trainable(...)` says which roles train, and
switching roles never changes it.

The base may be an encoder-decoder (T5) or decoder-only (Llama, Qwen, GPT): `self.family` (lorahf.families) is
how it reads and writes sequences; the Backbone and the stages never ask which one it is.
"""

from __future__ import annotations

import copy
import logging
import socket
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from lorahf.errors import LorahfError
from lorahf.logprobs import token_logprobs
from lorahf.runs import atomic_path

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_FILE = "head.safetensors"


class ScalarHead(nn.Module):
    """One number per decoder position: a sequence score (reward) or a per-token value.

    `offset` is not trained: the reward stage sets it so that the SFT data's own responses score 0 on
    average, which keeps PPO's rewards centred. With `likelihood` on, a sequence score also adds the
    response's mean token log-likelihood under the role's own LM head, times a learned weight (see
    `reward.likelihood_term`); per-token values never use it."""

    def __init__(self, d_model: int, likelihood: bool = False):
        super().__init__()
        self.linear = nn.Linear(d_model, 1)
        nn.init.normal_(self.linear.weight, std=d_model ** -0.5)
        nn.init.zeros_(self.linear.bias)
        self.likelihood_weight = nn.Parameter(torch.ones(()))
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("likelihood", torch.tensor(likelihood))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1) - self.offset

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The linear layer, and the likelihood weight only where the score uses it."""
        return list(self.linear.parameters()) + ([self.likelihood_weight] if self.likelihood else [])


@dataclass
class MemoryReport:
    """Bytes held by the shared base and by each role's adapter and head."""

    base_bytes: int
    adapter_bytes: dict[str, int] = field(default_factory=dict)
    head_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + sum(self.adapter_bytes.values()) + sum(self.head_bytes.values())

    @property
    def separate_models_bytes(self) -> int:
        """What the same roles would cost as separate copies of the model (each with its head)."""
        return sum(self.base_bytes + self.head_bytes.get(role, 0) for role in self.adapter_bytes)

    @property
    def ratio(self) -> float:
        return self.total_bytes / max(self.separate_models_bytes, 1)

    def as_dict(self) -> dict:
        return {"base_bytes": self.base_bytes, "adapter_bytes": dict(self.adapter_bytes),
                "head_bytes": dict(self.head_bytes), "total_bytes": self.total_bytes,
                "separate_models_bytes": self.separate_models_bytes, "ratio": round(self.ratio, 4)}


class Backbone:
    """The base model, its tokenizer, and the adapters and heads of every role."""

    _live: weakref.ref | None = None  # the Backbone alive in this process, if any

    def __init__(self, model, tokenizer, name: str, quantization: str, device: torch.device, family=None):
        from lorahf.families import family_of

        self.base = model
        self.family = family or family_of(model.config)
        self.tokenizer = tokenizer
        self.name = name
        self.quantization = quantization
        self.device = device
        self.peft = None  # becomes a PeftModel when the first adapter is added
        self.heads = nn.ModuleDict()
        self.active: str | None = None
        self._trainable: set[str] = set()
        self._adapter_parameters: list[tuple[str, nn.Parameter]] = []  # (role, LoRA tensor), kept by _refresh
        self._lora_layers: list[nn.Module] = []  # peft's LoRA layers, kept by _refresh

    # ---------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, name: str, quantization: str = "8bit", device: str = "auto",
             gradient_checkpointing: bool = False) -> "Backbone":
        """Load tokenizer and base once, frozen, through `from_pretrained` (a hub id or a local folder); the family
        (encoder-decoder or decoder-only) comes from the model's config.

        `gradient_checkpointing` recomputes each block's activations in the backward pass of training
        forwards (train mode: SFT and reward); generation and eval-mode passes are unaffected."""
        live = cls._live() if cls._live else None
        if live is not None:
            raise LorahfError(f"a base model ({live.name}) is already loaded in this process; reuse that "
                              "Backbone or call .close() on it first")
        from transformers import AutoConfig, AutoTokenizer

        quiet_libraries()
        target = _pick_device(device)
        check_folder(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            family = _check_pair(name, AutoConfig.from_pretrained(name), tokenizer)
            model = family.auto_class().from_pretrained(
                name, dtype=_compute_dtype(target), device_map={"": str(target)},
                quantization_config=_quantization_config(quantization, target))
        except (OSError, ValueError) as error:
            raise LorahfError(f"{name}: cannot load the model ({_first_line(error)})") from None
        give_pad_token(tokenizer)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        _dequantize_int8_on_cpu(model, quantization, target)
        if gradient_checkpointing:  # non-reentrant: no input needs requires_grad, dropout's RNG is replayed
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False  # a cache is never wanted while training; generate() asks for its own
        backbone = cls(model, tokenizer, name, quantization, target, family)
        cls._live = weakref.ref(backbone)
        return backbone

    def close(self) -> None:
        """Release the base so that another can be loaded in this process."""
        if Backbone._live is not None and Backbone._live() is self:
            Backbone._live = None
        self.base = self.peft = None
        self.heads = nn.ModuleDict()

    @property
    def model(self):
        """The model to call: the PeftModel once an adapter exists, the bare base before."""
        return self.peft if self.peft is not None else self.base

    @property
    def transformer(self):
        """The underlying transformers model (T5ForConditionalGeneration, LlamaForCausalLM...), LoRA layers
        injected if any."""
        return self.peft.get_base_model() if self.peft is not None else self.base

    @property
    def d_model(self) -> int:
        return self.base.config.hidden_size

    # --------------------------------------------------------------------------------- adapters
    @property
    def roles(self) -> list[str]:
        return list(self.peft.peft_config) if self.peft is not None else []

    def has_adapter(self, role: str) -> bool:
        return role in self.roles

    def add_adapter(self, role: str, lora, head: bool = False, likelihood: bool = False) -> None:
        """A fresh LoRA adapter for `role` (lora_B is zero, so it starts equal to the base)."""
        from peft import LoraConfig, get_peft_model

        if self.has_adapter(role):
            raise LorahfError(f"adapter '{role}' already exists")
        config = LoraConfig(task_type=self.family.peft_task, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules)
        if self.peft is None:
            self.peft = get_peft_model(self.base, config, adapter_name=role)
        else:
            self.peft.add_adapter(role, config)
        if head:
            self.heads[role] = ScalarHead(self.d_model, likelihood).to(self.device)
        self._refresh()

    def add_head(self, role: str, likelihood: bool = False) -> None:
        """A fresh scalar head for an existing adapter (e.g. a reward model copied from sft)."""
        self._require(role)
        self.heads[role] = ScalarHead(self.d_model, likelihood).to(self.device)
        self._refresh()

    def copy_adapter(self, source: str, target: str) -> None:
        """`target` becomes an exact copy of `source` (adapter weights and head), e.g. policy from sft."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        self._require(source)
        if self.has_adapter(target):
            self._delete(target)
        self.peft.add_adapter(target, copy.deepcopy(self.peft.peft_config[source]))
        set_peft_model_state_dict(self.peft, get_peft_model_state_dict(self.peft, adapter_name=source),
                                  adapter_name=target)
        if source in self.heads:
            self.heads[target] = copy.deepcopy(self.heads[source])
        elif target in self.heads:
            del self.heads[target]
        self._refresh()

    def use(self, role: str | None) -> "Backbone":
        """Run as `role` from now on (None: the bare base). Never changes what trains."""
        if role is None:
            if self.peft is not None:
                self.peft.base_model.disable_adapter_layers()
        else:
            self._require(role)
            self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(role)
        self.active = role
        self._apply_requires_grad()  # set_adapter just made `role` trainable and every other adapter frozen
        return self

    def set_trainable(self, *roles: str) -> None:
        """Exactly these roles' adapters and heads get gradients; everything else stays frozen."""
        for role in roles:
            self._require(role)
        self._trainable = set(roles)
        self._apply_requires_grad()

    def parameters(self, role: str, encoder: bool = True) -> list[nn.Parameter]:
        """The trainable tensors of `role`: its LoRA weights (without the encoder's if `encoder` is False),
        then its head's."""
        self._require(role)
        found = [p for name, p in self.peft.named_parameters()
                 if _adapter_of(name) == role and (encoder or ".encoder." not in name)]
        if role in self.heads:
            found += self.heads[role].trainable_parameters()
        return found

    def head(self, role: str) -> ScalarHead:
        if role not in self.heads:
            raise LorahfError(f"role '{role}' has no scalar head")
        return self.heads[role]

    def _refresh(self) -> None:
        """Re-assert requires_grad and train/eval mode after peft touched them (set_adapter, add/load_adapter)."""
        self._adapter_parameters = []
        if self.peft is not None:
            # Modules peft just created start in train mode (dropout on) even inside an eval-mode model.
            self.peft.train(self.peft.training)
            self._adapter_parameters = [(_adapter_of(name), parameter) for name, parameter in
                                        self.peft.named_parameters() if _adapter_of(name) is not None]
            self._lora_layers = [module for module in self.peft.modules() if hasattr(module, "lora_A")]
        self._apply_requires_grad()

    def _apply_requires_grad(self) -> None:
        for role, parameter in self._adapter_parameters:
            parameter.requires_grad_(role in self._trainable)
        for role, head in self.heads.items():
            head.requires_grad_(role in self._trainable)

    def _delete(self, role: str) -> None:
        """Remove an adapter; if it was the active one, run as the bare base until told otherwise."""
        others = [r for r in self.roles if r != role]
        if self.active == role and others:
            self.peft.set_adapter(others[0])  # peft needs some adapter active while one is deleted
            self.use(None)
        self.peft.delete_adapter(role)
        if role in self.heads:
            del self.heads[role]

    def _require(self, role: str) -> None:
        if not self.has_adapter(role):
            raise LorahfError(f"no adapter named '{role}' (have: {', '.join(self.roles) or 'none'})")

    # ------------------------------------------------------------------------------ save / load
    def save_adapter(self, role: str, folder: str | Path) -> Path:
        """Write `role` as a standard peft adapter folder (+ head.safetensors), atomically.

        The folder loads with plain `PeftModel.from_pretrained(base, folder)`."""
        from lorahf import distributed

        self._require(role)
        folder = Path(folder)
        distributed.first_writes(lambda: self.write_adapter(role, folder))  # data parallelism: the others wait
        return folder

    def write_adapter(self, role: str, folder: Path) -> None:
        """`save_adapter` without waiting for other processes (for a caller that writes as the first process)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in
                 get_peft_model_state_dict(self.peft, adapter_name=role).items()}
        with atomic_path(folder) as temp:
            temp.mkdir()
            config = copy.deepcopy(self.peft.peft_config[role])
            config.base_model_name_or_path = self.name
            config.inference_mode = True
            config.save_pretrained(str(temp))
            save_file(state, str(temp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            if role in self.heads:
                head_state = {k: v.detach().contiguous().cpu() for k, v in self.heads[role].state_dict().items()}
                save_file(head_state, str(temp / HEAD_FILE), metadata={"d_model": str(self.d_model)})

    def load_adapter(self, role: str, folder: str | Path) -> None:
        """Load an adapter folder written by `save_adapter` (or by peft) as `role`, replacing any."""
        from peft import PeftModel
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / ADAPTER_CONFIG).is_file():
            raise LorahfError(f"{folder}: not an adapter folder (no {ADAPTER_CONFIG})")
        if self.has_adapter(role):
            self._delete(role)
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(folder), adapter_name=role, is_trainable=True)
            else:
                self.peft.load_adapter(str(folder), adapter_name=role, is_trainable=True)
            if (folder / HEAD_FILE).is_file():
                head = ScalarHead(self.d_model).to(self.device)
                head.load_state_dict(load_file(str(folder / HEAD_FILE), device=str(self.device)))
                self.heads[role] = head
        except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:  # not a folder this base can read
            if self.peft is not None and role in self.peft.peft_config:
                self._delete(role)
            raise LorahfError(f"{folder}: cannot load this adapter ({type(error).__name__}: {_first_line(error)})",
                              hint="it was written for another base or left damaged; rerun the stage that "
                                   "writes it with `lorahf run RECIPE --stage STAGE`") from None
        self._refresh()

    # ------------------------------------------------------------------------------------ memory
    def memory_report(self) -> MemoryReport:
        """Bytes of the base (quantized weights counted as stored) vs each adapter and head."""
        base = 0
        adapters: dict[str, int] = {role: 0 for role in self.roles}
        model = self.model
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            size = tensor.numel() * tensor.element_size()
            role = _adapter_of(name)
            if role is None:
                base += size + _quant_state_bytes(tensor)
            else:
                adapters[role] += size
        heads = {role: sum(t.numel() * t.element_size() for t in head.state_dict().values())
                 for role, head in self.heads.items()}
        return MemoryReport(base_bytes=base, adapter_bytes=adapters, head_bytes=heads)

    # ---------------------------------------------------------------------------------- forward
    def encode(self, batch) -> torch.Tensor | None:
        """The prompts' own states under the active role, for reuse by `decode` and `generate`: an encoder-decoder's
        encoder states; None for a decoder-only base (it reads the prompt with the response)."""
        return self.family.encode(self.transformer, batch)

    def decode(self, batch, encoder_states: torch.Tensor | None = None) -> torch.Tensor:
        """States that read the responses, teacher-forced: [B, R + 1, d_model].

        states[:, t] has read the prompt and response tokens < t, so it predicts response token t (t < R), and
        states[:, length] has read the whole response including its EOS. Only response positions (and the one
        before the first) come out: nothing downstream can read a prompt or padding token as a target."""
        return self.family.response_states(self.transformer, batch, encoder_states)

    def lm_logits(self, decoder_states: torch.Tensor) -> torch.Tensor:
        """Next-token logits from `decode`'s states, exactly as the model's own forward computes them."""
        return self.family.lm_logits(self.transformer, decoder_states)

    def response_logits(self, batch) -> torch.Tensor:
        """[B, R, vocab]: logits[:, t] scores response token t."""
        return self.lm_logits(self.decode(batch)[:, :-1])

    def sequence_scores(self, batch, role: str | None = None) -> torch.Tensor:
        """[B]: the head of `role` (default: the active one) at each response's last token."""
        return self.scores_from_states(self.decode(batch), batch, role or self.active)

    def scores_from_states(self, states: torch.Tensor, batch, role: str) -> torch.Tensor:
        """[B]: `role`'s sequence score from decoder states that `role` computed (see `sequence_scores`)."""
        head = self.head(role)
        rows = torch.arange(states.shape[0], device=states.device)
        scores = head(states[rows, batch.response_lengths])
        if head.likelihood:
            logprobs = token_logprobs(self.lm_logits(states[:, :-1]), batch.response_ids, batch.response_mask)
            scores = scores + head.likelihood_weight * logprobs.sum(1) / batch.response_lengths
        return scores

    def token_values(self, batch, role: str | None = None) -> torch.Tensor:
        """[B, R]: the head of `role` at the state before each response token (a value per token)."""
        return self.head(role or self.active)(self.decode(batch)[:, :-1])

    @contextmanager
    def per_row(self, roles: list[str]) -> Iterator[Backbone]:
        """Inside, row i of every forward pass runs as `roles[i]`: one pass for several roles.

        The base computes once for all rows (one int8 matmul where there would be one per role) and each
        row gets only its own role's LoRA update: every listed adapter is active, and a hook on each
        adapter's lora_A output zeroes the rows of the other roles (so their gradients are zero too).
        peft's own mixed-adapter batches add the LoRA update into the 8-bit base's output in place,
        which autograd refuses, and they are for inference only; this also trains. Eval mode only
        (LoRA dropout would not see the row masks)."""
        names = list(dict.fromkeys(roles))
        for role in names:
            self._require(role)
        if self.peft.training:
            raise LorahfError("per_row runs in eval mode only (dropout off)")
        masks = {role: torch.tensor([r == role for r in roles], dtype=torch.float32, device=self.device)
                 for role in names}
        previous = self.active
        self.peft.base_model.enable_adapter_layers()
        self.peft.base_model.set_adapter(names)
        self._apply_requires_grad()
        handles = [layer.lora_A[role].register_forward_hook(partial(_keep_rows, masks[role]))
                   for layer in self._lora_layers for role in names if role in layer.lora_A]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.use(previous)

    def generate(self, batch, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, encoder_states: torch.Tensor | None = None,
                 return_logits: bool = False):
        """Responses of the active role for a batch of prompts, in eval mode (no dropout), under
        `torch.inference_mode`.

        Returns (response_ids [B, R] right-padded with pad after EOS, lengths [B] including EOS; a
        response that hit the limit has no EOS and length max_new_tokens), and with `return_logits` also
        the raw next-token logits that chose each response token, [B, R, vocab] (before temperature or
        top-k). `encoder_states`: the prompts' encoder outputs under this role, if already computed."""
        return generate_with(self.model, self.family, self.tokenizer, batch, max_new_tokens, do_sample, temperature,
                             top_k, top_p, encoder_states, return_logits)


def generate_with(model, family, tokenizer, batch, max_new_tokens: int, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  encoder_states: torch.Tensor | None = None, return_logits: bool = False):
    """`Backbone.generate` with any model of the family: the Backbone's own (its active role), or another copy of the
    base such as the rollout's unquantized policy (lorahf.ppo.rollout_weights)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            output = model.generate(
                **family.generation_inputs(batch, encoder_states), max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=temperature if do_sample else None,
                top_k=top_k if do_sample else None, top_p=top_p if do_sample else None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                output_logits=return_logits, return_dict_in_generate=True)
    finally:
        model.train(was_training)
    # clones made outside inference mode are ordinary tensors, usable later in autograd
    responses, lengths = _cut_after_eos(family.generated_responses(output.sequences, batch).clone(),
                                        tokenizer.eos_token_id, tokenizer.pad_token_id)
    if not return_logits:
        return responses, lengths
    return responses, lengths, torch.stack(output.logits, dim=1)[:, :responses.shape[1]].clone()


def respond(backbone: Backbone, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int = 64,
            on_batch=None, **sampling) -> list[str]:
    """Decoded responses of the active role to tokenized prompts, generated in batches; `on_batch(n)` is
    called after each batch of n (e.g. to advance a progress bar)."""
    from lorahf.data import collate

    texts: list[str] = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = collate(prompt_ids[start:start + batch_size], None, backbone.tokenizer.pad_token_id)
        responses, _ = backbone.generate(batch.to(backbone.device), max_new_tokens, **sampling)
        texts += backbone.tokenizer.batch_decode(responses, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(len(responses))
    return [text.strip() for text in texts]


def _keep_rows(mask: torch.Tensor, module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook for `per_row`: zero a LoRA input projection's output on the rows of other roles."""
    return output * mask.view(-1, *([1] * (output.dim() - 1)))


def quiet_libraries() -> None:
    """lorahf reports progress itself; silence per-call chatter that would drown it."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # bitsandbytes warns on every int8 matmul that fp32 inputs are cast to fp16 for quantization.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _cut_after_eos(responses: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    is_eos = responses == eos_id
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])
    positions = torch.arange(responses.shape[1], device=responses.device)
    cleaned = responses.masked_fill(positions[None, :] >= lengths[:, None], pad_id)
    return cleaned, lengths


def _adapter_of(parameter_name: str) -> str | None:
    """'...q.lora_A.policy.weight' -> 'policy'; None for base parameters."""
    parts = parameter_name.split(".")
    for index, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[index + 1]
    return None


def _quant_state_bytes(tensor: torch.Tensor) -> int:
    """bitsandbytes keeps int8 row scales (SCB) beside the weight, outside the state dict."""
    scales = getattr(tensor, "SCB", None)
    return scales.numel() * scales.element_size() if isinstance(scales, torch.Tensor) else 0


def check_base(name: str, quantization: str = "8bit", device: str = "auto") -> None:
    """Refuse, without reading any weights, what `Backbone.load` would refuse: a folder that is not a model, a model
    that is neither an encoder-decoder nor a decoder-only LM, a tokenizer that does not belong to the model, a device
    or quantization this machine cannot run."""
    from transformers import AutoConfig, AutoTokenizer

    quiet_libraries()
    target = _pick_device(device)
    check_folder(name)
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as error:  # OSError, ValueError, or the tokenizers library's own exception
        raise LorahfError(f"{name}: cannot load the model ({_first_line(error)})") from None
    _check_pair(name, config, tokenizer)
    _quantization_config(quantization, target)


def check_folder(name: str) -> None:
    """A local folder must hold a model; a hub id must be cached or the hub reachable (else the hub client
    retries for about 20 seconds before it fails)."""
    local = Path(name)
    if local.exists() or name.startswith((".", "/")):
        if not (local / "config.json").is_file():
            raise LorahfError(f"{name}: not a model folder (no config.json); give a hub id such as "
                              "google/flan-t5-base or a folder written by save_pretrained")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        problem = "HF_HUB_OFFLINE is set"
    else:
        try:
            socket.create_connection((host, 443), timeout=5).close()
            return
        except OSError as error:
            problem = f"{host} cannot be reached ({error.strerror or error})"
    raise LorahfError(f"{name}: not a local folder, not in the hub cache, and {problem}",
                      hint="download it where there is a network (hf download NAME) or give a local folder")


def _check_pair(name: str, config, tokenizer):
    """The family of `name`'s model, once its tokenizer is seen to belong to it."""
    from lorahf.families import family_of

    family = family_of(config)
    if family is None:
        raise LorahfError(f"{name}: lorahf trains encoder-decoder (T5) and decoder-only (Llama, Qwen, GPT) language "
                          f"models; this is a {config.model_type}, neither")
    vocabulary = getattr(config, "vocab_size", None)
    if vocabulary is not None and len(tokenizer) > vocabulary:
        raise LorahfError(f"{name}: its tokenizer has {len(tokenizer):,} tokens but the model only {vocabulary:,}: "
                          "they do not belong together", hint="use the tokenizer saved with this model")
    if tokenizer.eos_token_id is None:
        raise LorahfError(f"{name}: its tokenizer has no EOS token, so no response could end",
                          hint="use the tokenizer saved with this model")
    return family


def give_pad_token(tokenizer) -> None:
    """A tokenizer without a pad token (Llama, GPT-2) pads with EOS: no new token, no resized vocabulary. Masks come
    from lengths, never from `ids != pad`, so a padding EOS is never read as the end of a response."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LorahfError("model.device is 'cuda' but no CUDA GPU is visible", hint="use device: auto or cpu")
    return torch.device(device)


def _compute_dtype(device: torch.device) -> torch.dtype:
    """T5 overflows in fp16; bf16 where the GPU has it, fp32 otherwise (and always on the CPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _dequantize_int8_on_cpu(model, quantization: str, device: torch.device) -> None:
    """On a CPU, every 8-bit layer of a model just loaded (the shared base, a reward encoder) multiplies as
    bitsandbytes does in training, in eval mode too. bitsandbytes picks its CPU kernel from the layer's `training`
    flag: in training it dequantizes the int8 weight for a plain float matmul (MatMul8bitFp), otherwise it quantizes
    each input to int8 as well (MatMul8bitLt, with no fast CPU kernel). The former is 2.4-3.6x faster at the tiny
    T5's shapes, faster up to Flan-T5-large's and within 10 % at xl's, with half the error
    (benchmarks/int8_cpu_kernels.py), and generation, scoring and training then compute the same numbers. The flag
    sets nothing else in the layer; GPUs keep LLM.int8."""
    if quantization != "8bit" or device.type != "cpu":
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            module.register_forward_pre_hook(_as_in_training)


def _as_in_training(module, args) -> None:
    module.training = True


def _quantization_config(quantization: str, device: torch.device):
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LorahfError(f"model.quantization '{quantization}' needs bitsandbytes, which is not installed",
                          hint="pip install bitsandbytes, or set model.quantization: none") from None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=_compute_dtype(device))
    raise LorahfError(f"unknown quantization '{quantization}' (use 8bit, 4bit or none)")


def describe_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"
