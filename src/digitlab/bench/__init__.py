"""Benchmarks: named recipes timed per seed, with machine info and ratios measured in one run."""

from digitlab.bench.harness import RECIPES, machine_info, run_bench, run_bench_vs

__all__ = ["RECIPES", "machine_info", "run_bench", "run_bench_vs"]
