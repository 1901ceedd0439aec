"""vlmloom.trainer.rewards: domain verifiers for RLCS and `vlmloom reward` (torch-free)."""
