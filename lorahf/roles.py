"""The roles of RLHF, each a LoRA adapter on the one shared base (see lorahf.backbone).

    role      holds                                   written by        read by
    sft       LM head: the SFT policy, then the       sft               every later stage (the frozen reference)
              frozen reference
    policy    LM head: the optimised policy           ppo, dpo          evaluate, merge, generate
    reward    scalar head: one score per sequence     reward            ppo, evaluate (the `reward` judge)
    value     scalar head: one value per token        ppo               -

`policy` is the name every policy optimiser writes by default, so evaluate, merge and generate need no
change when a new one arrives; a stage may write it under another name (dpo.adapter) to compare two.
"""

SFT = "sft"
POLICY = "policy"
REWARD = "reward"
VALUE = "value"
POLICY_LAST = "policy-last"  # ppo's policy of the last iteration (`policy` holds the best)

SCORING = (REWARD, VALUE)
"""Roles whose head is a scalar: they score answers and never write them."""

LORA_OF = {SFT: SFT, POLICY: SFT, REWARD: REWARD, VALUE: REWARD}
"""Whose `lora:` settings a role is made with: the policy starts as a copy of sft, the value model of reward."""


def lora_settings_of(role: str) -> str:
    """The `lora:` entry a role is made with (an adapter written under another name, e.g. dpo.adapter, is a policy)."""
    return LORA_OF.get(role, SFT)
