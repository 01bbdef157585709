"""The empirical privacy audit: a canary experiment that measures a lower bound on ε.

An experiment harness, not run-time code: it trains one simulated node with the real DP-SGD
loop (client/dp_training.py) at a run's record-level settings, with canary records inserted by
secret coins, and turns the server's view into the one-run lower bound of Steinke, Nasr &
Jagielski (common/privacy/one_run_bound.py). docs/privacy-audit.md explains the result.
"""
