"""Pictures of a search, drawn by ``optuna.visualization.matplotlib`` (matplotlib only, no display):
the optimisation history (each trial's score and the best so far), the per-epoch scores the pruner
saw (pruned trials stop early), and the parameters' importances (needs two or more complete trials
that differ)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from audiotag.reports.plots import save

log = logging.getLogger(__name__)

HISTORY, EPOCHS, IMPORTANCES = "history.png", "epochs.png", "importances.png"


def write_search_plots(study: optuna.Study, out_dir: Path, metric: str) -> list[Path]:
    """The PNGs written in ``out_dir`` (a picture that cannot be drawn yet is logged and skipped)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    drawings: dict[str, Callable[[], Any]] = {
        HISTORY: lambda: views.plot_optimization_history(study, target_name=f"CV {metric}"),
        EPOCHS: lambda: views.plot_intermediate_values(study),
        IMPORTANCES: lambda: views.plot_param_importances(study, target_name=f"CV {metric}"),
    }
    written = []
    for name, draw in drawings.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning, too few trials for a legend...
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                log.info("tune: %s not drawn: %s", name, exc)
                plt.close("all")
                continue
        if name == EPOCHS:
            axes.set_title("Best validation score so far, per epoch (pruned trials stop early)")
            axes.set_ylabel(f"best {metric} in the fold so far")
            axes.set_xlabel("epoch (a second fold's epochs follow the longest schedule's)")
        fig = axes.figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        written.append(save(fig, out_dir / name))
        plt.close(fig)
    return written
