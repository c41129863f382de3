"""SFT (stage ``04_sft``) and preference training (stage ``05_preference``): CogPO, DPO, beta-DPO, SimPO."""
