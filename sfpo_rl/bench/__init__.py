"""System benchmarks (issue 6): rollout engine throughput, weight sync, SFPO overhead, step-time breakdown and
update throughput; and reward robustness (issue 12). Each module runs alone (`python -m sfpo_rl.bench.<name>
--out DIR [--quick]`), prints its tables and writes DIR/<name>.json; `python -m sfpo_rl.bench` runs them all
and prints one table."""
