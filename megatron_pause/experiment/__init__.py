"""The four-variant pause experiment ({StdPT, PausePT} x {StdFT, PauseFT}) as one command.

spec.py      the YAML/TOML description, validated
plan.py      the run graph: prepare -> pretrain (shared by both finetuning branches) ->
             finetune -> evaluate, with completion markers
commands.py  each stage's command line and how its outputs are read (the one place that
             knows the entry points' flags)
local.py     local processes, up to --max-parallel, with progress and ETA
slurm.py     one sbatch job per stage (arrays over seeds), chained with afterok
results.py   results.json
stats.py     t-intervals, seed-paired differences, sign counts, verdicts
report.py    report.md and the plots
"""
