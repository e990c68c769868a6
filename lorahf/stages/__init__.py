"""One file per stage, each listed in `lorahf.stages.registry` (the only place the rest of the package learns
about a stage). Each exposes `run(recipe, backbone, folder, progress) -> metrics`: load what it needs, loop,
save its adapter and samples, return the metrics its marker keeps; and the few functions the registry names
for the planner and the report."""
