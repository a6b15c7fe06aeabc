"""The ``threshold`` command's plot: precision and recall of the labelled events per threshold."""

from __future__ import annotations

from pathlib import Path

from trainer.feedback_threshold import Proposal, ThresholdCurve


def write_threshold_plot(
    path: Path, curve: ThresholdCurve, proposal: Proposal, *, current: float, relative: bool
) -> Path:
    """Precision and recall against the threshold (absolute, or relative to the current one for
    windowed models), the current and the proposed threshold marked; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 1.0 if relative else current
    xs = curve.factors * scale
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.step(xs, curve.precision, where="post", label="precision")
    ax.step(xs, curve.recall, where="post", label="recall (of confirmed events)")
    ax.axvline(scale, color="grey", linestyle=":", label=f"current {scale:.4g}")
    proposed = proposal.factor * scale
    ax.axvline(proposed, color="red", linestyle="--", label=f"proposed {proposed:.4g}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("threshold / current threshold (per key)" if relative else "threshold")
    ax.set_ylabel("share")
    ax.set_title(
        f"Labelled events: precision {proposal.precision:.3f}, recall {proposal.recall:.3f}"
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
