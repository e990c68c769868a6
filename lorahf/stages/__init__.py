"""One file per stage. Each exposes `run(recipe, backbone, folder, progress) -> metrics`:
load what it needs, loop, save its adapter and samples, return the metrics its marker keeps."""

from lorahf.stages import evaluate, ppo, reward, sft

RUNNERS = {"sft": sft.run, "reward": reward.run, "ppo": ppo.run, "evaluate": evaluate.run}
