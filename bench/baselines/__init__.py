"""The baselines bench/run.py measures ours against, each in a module of its own."""
