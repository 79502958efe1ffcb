"""Stage: training. train() (run.py) over TRL's SFTTrainer and DPOTrainer, their configs, checkpoints,
tokenising and loss masks, the embedded tiny model, hosted fine-tuning on Together."""
