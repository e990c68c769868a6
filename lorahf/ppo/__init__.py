"""The PPO pieces as plain functions of tensors: no model, no config, no I/O (each has property tests).

Shapes: [B, T] per response token (right-padded; `mask` is 1 on real tokens, built from lengths), [B] per
response. Every generated token, the first included, gets a log-prob, a KL term and an advantage.
"""
