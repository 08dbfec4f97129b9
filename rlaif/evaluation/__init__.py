"""Evaluation of trained models: judged win rate against the dSFT model, and MT-Bench with its data."""
