"""Training: config, DeepSpeed engine set-up, the loop, checkpoints, export."""
