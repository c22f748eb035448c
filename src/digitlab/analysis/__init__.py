"""Analysis: errors, sensitivity maps, robustness, statistics and figures.

Submodules are imported on demand (``from digitlab.analysis.stats import mcnemar``);
this package file imports nothing heavy so ``import digitlab.analysis`` stays cheap.
"""

__all__ = ["errors", "explore", "plots", "robustness", "sensitivity", "stats"]
