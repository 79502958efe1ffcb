"""Stage: training. ``train()`` (run.py) runs the steps, over a run context (context.py): the mixture
(mixture.py), the base model (base.py), SFT (sft.py) and DPO (dpo.py) with TRL, their configs (args.py),
checkpoints and the run folder (checkpoints.py), training_log's fields (record.py), the bug suite and
publishing (finish.py); tokenising and loss masks (masking.py), the embedded tiny model (tiny.py),
hosted fine-tuning on Together (together.py), and how training fails (errors.py)."""
