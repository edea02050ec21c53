"""Training building blocks shared by pretrain, SFT and DPO."""
