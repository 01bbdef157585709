"""The ServerApp and the federation: strategy, client-level DP, rounds, checkpoints, reports."""
