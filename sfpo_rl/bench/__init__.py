"""System benchmarks: rollout engine throughput, weight sync, SFPO overhead, step-time breakdown, update
throughput, micro-batching, LoRA, the one-box placements, and reward robustness. Each module runs alone
(`python -m sfpo_rl.bench.<name> --out DIR [--quick]`), prints its tables and writes DIR/<name>.json;
`python -m sfpo_rl.bench` runs them all and prints one table."""
