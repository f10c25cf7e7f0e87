"""Experiments: compare methods under one budget, evaluate them at every S, plot the results.

    results = compare(model_factory, train, val, test, ["lora", "balora", ...],
                      adapter=BaLoRAConfig(...), train_config=TrainConfig(...),
                      seeds=(0, 1, 2), num_samples=(1, 4, 16), ood=ood, output_dir="runs/x")
    results.summary("balora", "ece")        # mean ± std over seeds at the largest S
    Results.load("runs/x"); plot_results(results)

``runner`` trains and evaluates (resumable), ``evaluate`` turns predictions into metrics,
``results`` holds the typed results and their files, ``plots`` draws them. See
docs/evaluation.md for every metric and the layout of results.json.
"""

from balora.experiments.plots import plot_results
from balora.experiments.results import (
    AlphaSummary,
    Evaluation,
    MethodRun,
    MetricSummary,
    PeakMemory,
    Results,
)
from balora.experiments.runner import StaleResultsError, compare
from balora.experiments.specs import MethodSpec

__all__ = [
    "AlphaSummary",
    "Evaluation",
    "MethodRun",
    "MethodSpec",
    "MetricSummary",
    "PeakMemory",
    "Results",
    "StaleResultsError",
    "compare",
    "plot_results",
]
