"""Analysis: mistakes, sensitivity maps, robustness, statistics, exploration and figures.

Submodules are imported on demand (``from digitlab.analysis.stats import mcnemar``);
this package file imports nothing heavy so ``import digitlab.analysis`` stays cheap.
Every figure is rendered to PNG bytes by :func:`digitlab.analysis.plots.fig_to_png`.
"""

__all__ = ["adversarial", "corruptions", "explore", "label_issues", "mistakes", "plots", "robustness",
           "sensitivity", "stats"]
