"""The ClientApp and a node's plain functions: set-up, DP-SGD round, reply, SecAgg+, check-data."""
