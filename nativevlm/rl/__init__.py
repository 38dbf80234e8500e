"""Post-training with preferences and rewards: the MPO and GSPO losses (`losses`), the verifiable reward
(`reward`) and preference pairs sampled from a model (`preferences`)."""
