"""The ``--report DIR`` pictures and summary: what a user looks at to trust (or not) a model.

Files written (those that apply):
- ``loss.png``: training and validation loss per epoch, the kept epoch marked;
- ``errors.png``: reconstruction-error histogram on a log axis, normal vs anomalous rows, threshold;
- ``reconstructions.png``: image models only, originals over reconstructions (and, for denoising
  models, the noisy input the model was trained to clean);
- ``latent.png``: a 2-D PCA projection of the latent codes (a VAE's mean codes) coloured by label;
- ``code_activity.png``: sparse models (``--sparsity``) only, how many code units are active
  (code > 0) per row, normal vs anomalous;
- ``prior_samples.png``: image VAEs only, a grid of images decoded from codes drawn from the prior;
- ``summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_contract import artifact

NORMAL_COLOR = "#1f77b4"
ANOMALY_COLOR = "#d62728"
THRESHOLD_COLOR = "#333333"
# A code unit counts as active in a row when it exceeds this: sparse codes are ReLU, exactly 0 off.
ACTIVE_CODE = 1e-6


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(path: Path, history: dict[str, list[float]], best_epoch: int, loss_name: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], label="training", color=NORMAL_COLOR)
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], label="validation", color="#ff7f0e")
    ax.axvline(
        best_epoch, color=THRESHOLD_COLOR, ls="--", lw=1, label=f"kept weights (epoch {best_epoch})"
    )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss_name} loss (scaled units, log)")
    ax.set_title("Training progress: validation loss decides when to stop")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_ERROR_WORDS = {"mse": "mean squared", "mae": "mean absolute"}


def score_words(error: str, score: str = "mean") -> str:
    """What a point model's score is, in words (``error``: mse/mae, ``score``: its reduction)."""
    if score == "feature_max":
        kind = _ERROR_WORDS[error].split()[1]
        return (
            f"largest {kind} reconstruction error of a feature over its mean on the training rows"
        )
    return f"{_ERROR_WORDS[error]} reconstruction error"


def plot_errors(
    path: Path,
    errors: np.ndarray,
    is_anomaly: np.ndarray,
    threshold: float,
    percentile: float,
    error: str = "mse",
    score: str = "mean",
) -> None:
    plt = _plt()
    errors = np.maximum(np.asarray(errors, dtype=np.float64), 1e-12)
    lo, hi = errors.min(), max(errors.max(), threshold)
    bins = np.geomspace(lo * 0.9, hi * 1.1, 60)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    normal = errors[~is_anomaly]
    anomal = errors[is_anomaly]
    ax.hist(normal, bins=bins, alpha=0.65, color=NORMAL_COLOR, label=f"normal ({normal.size})")
    if anomal.size:
        ax.hist(
            anomal, bins=bins, alpha=0.65, color=ANOMALY_COLOR, label=f"anomaly ({anomal.size})"
        )
    ax.axvline(
        threshold,
        color=THRESHOLD_COLOR,
        ls="--",
        lw=1.5,
        label=f"threshold {threshold:.4g} (p{percentile:g})",
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"score: {score_words(error, score)} (scaled units, log)")
    ax.set_ylabel("rows")
    flagged_normal = float(np.mean(normal > threshold)) if normal.size else 0.0
    title = f"Held-out rows: {flagged_normal:.1%} of normal above threshold"
    if anomal.size:
        title += f", {np.mean(anomal > threshold):.1%} of anomalies caught"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latent(path: Path, codes: np.ndarray, labels: np.ndarray) -> None:
    """PCA of the latent codes; with one latent unit it is plotted against row index."""
    plt = _plt()
    codes = np.asarray(codes, dtype=np.float64)
    if codes.shape[1] >= 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0).fit(codes)
        pts = pca.transform(codes)
        xlabel = f"PC1 ({pca.explained_variance_ratio_[0]:.0%} of latent variance)"
        ylabel = f"PC2 ({pca.explained_variance_ratio_[1]:.0%})"
    else:
        pts = np.c_[np.arange(codes.shape[0]), codes[:, 0]]
        xlabel, ylabel = "row", "latent value"
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    anomal = labels != 0
    ax.scatter(pts[~anomal, 0], pts[~anomal, 1], s=9, alpha=0.6, color=NORMAL_COLOR, label="normal")
    if anomal.any():
        ax.scatter(
            pts[anomal, 0],
            pts[anomal, 1],
            s=12,
            alpha=0.7,
            color=ANOMALY_COLOR,
            marker="x",
            label="anomaly",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Latent space ({codes.shape[1]} dims), 2-D PCA projection", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def active_code_units(codes: np.ndarray, tol: float = ACTIVE_CODE) -> np.ndarray:
    """Per row, how many code units have magnitude above ``tol``."""
    return (np.abs(np.asarray(codes)) > tol).sum(axis=1)


def plot_code_activity(path: Path, codes: np.ndarray, labels: np.ndarray) -> None:
    """Histogram of active code units per row: what the L1 penalty did to the code."""
    plt = _plt()
    active = active_code_units(codes)
    anomal = labels != 0
    bins = np.arange(codes.shape[1] + 2) - 0.5
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    ax.hist(active[~anomal], bins=bins, alpha=0.7, color=NORMAL_COLOR, label="normal")
    if anomal.any():
        ax.hist(active[anomal], bins=bins, alpha=0.6, color=ANOMALY_COLOR, label="anomaly")
    ax.set_xlabel(f"active code units (code > 0) of {codes.shape[1]}")
    ax.set_ylabel("rows")
    ax.set_title(f"Sparse code: {np.mean(active):.1f} of {codes.shape[1]} units active on average")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prior_samples(path: Path, decoder: Any, latent: int, image_shape: Sequence[int]) -> None:
    """Images decoded from codes drawn from the VAE's prior N(0, I): what the model learnt."""
    plt = _plt()
    z = np.random.default_rng(0).standard_normal((32, latent)).astype(np.float32)
    images = np.asarray(decoder(z, training=False)).reshape(32, *image_shape[:2], -1)
    fig, axes = plt.subplots(4, 8, figsize=(8, 4.4))
    for ax, img in zip(axes.flat, images, strict=True):
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
        ax.axis("off")
    fig.suptitle("Decoded from the prior N(0, I)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reconstructions(
    path: Path,
    rows: Sequence[tuple[str, np.ndarray]],
    image_shape: Sequence[int],
    captions: Sequence[str],
    title: str = "Originals and reconstructions",
) -> None:
    """A grid: one column per example, one row per stage (original, noisy, reconstruction)."""
    plt = _plt()
    n = len(captions)
    fig, axes = plt.subplots(
        len(rows), n, figsize=(1.25 * n + 1.2, 1.45 * len(rows) + 0.5), squeeze=False
    )
    shape = tuple(image_shape)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = np.asarray(images[c]).reshape(shape)
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                ax.set_title(captions[c], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pick_examples(errors: np.ndarray, labels: np.ndarray, k: int = 8) -> np.ndarray:
    """Typical normal rows, the worst normal ones, and the clearest anomalies."""
    normal = np.flatnonzero(labels == 0)
    anomal = np.flatnonzero(labels != 0)
    order_n = normal[np.argsort(errors[normal])]
    picks: list[int] = []
    if anomal.size:
        picks += list(order_n[:: max(1, len(order_n) // 3)][:3]) + list(order_n[-1:])
        order_a = anomal[np.argsort(errors[anomal])]
        picks += list(
            order_a[np.linspace(0, len(order_a) - 1, min(k - len(picks), len(order_a))).astype(int)]
        )
    else:
        picks += list(order_n[np.linspace(0, len(order_n) - 1, min(k, len(order_n))).astype(int)])
    return np.asarray(picks[:k], dtype=int)


def write_report(
    out_dir: str | Path,
    *,
    manifest: artifact.Manifest,
    scaler: artifact.Scaler,
    model: Any,
    x: np.ndarray,
    labels: np.ndarray,
    errors: np.ndarray,
    history: dict[str, list[float]] | None = None,
    best_epoch: int | None = None,
    metrics: dict[str, Any] | None = None,
    title: str = "Model report",
) -> list[Path]:
    """Write the PNGs and summary for rows ``x`` (unscaled) with their ``errors`` and ``labels``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    labels = np.asarray(labels)
    is_anom = labels != 0
    if history:
        plot_loss(out / "loss.png", history, best_epoch or len(history["loss"]), manifest.loss)
        written.append(out / "loss.png")
    plot_errors(
        out / "errors.png",
        errors,
        is_anom,
        manifest.threshold,
        manifest.percentile,
        manifest.error,
        manifest.score,
    )
    written.append(out / "errors.png")

    xs = scaler.transform(x).reshape(-1, *manifest.input_shape)
    encoder = model.get_layer("encoder")
    decoder = model.get_layer("decoder")
    codes = np.concatenate(
        [np.asarray(encoder(xs[i : i + 4096], training=False)) for i in range(0, len(xs), 4096)]
    ).reshape(len(xs), -1)
    plot_latent(out / "latent.png", codes, labels)
    written.append(out / "latent.png")
    if manifest.hyperparameters.get("sparsity"):
        plot_code_activity(out / "code_activity.png", codes, labels)
        written.append(out / "code_activity.png")
    if manifest.architecture == "vae" and manifest.image_shape:
        plot_prior_samples(
            out / "prior_samples.png", decoder, manifest.latent_dim, manifest.image_shape
        )
        written.append(out / "prior_samples.png")

    if manifest.image_shape:
        written.append(_plot_examples(out, manifest, model, xs, errors, labels))

    summary = {
        "title": title,
        "version": manifest.version,
        "architecture": manifest.architecture,
        "features": manifest.n_features,
        "latent_dim": manifest.latent_dim,
        "loss": manifest.loss,
        "denoise": manifest.denoise,
        "error": manifest.error,
        "score": manifest.score,
        "threshold": manifest.threshold,
        "percentile": manifest.percentile,
        "calibration_basis": calibration_basis(manifest),
        "rows": manifest.rows.model_dump(),
        "validation_metrics": manifest.validation_metrics,
        "hyperparameters": manifest.hyperparameters,
        "report_rows": int(len(errors)),
        "report_anomalies": int(is_anom.sum()),
        "metrics": metrics,
        "files": [p.name for p in written],
        "notes": manifest.notes,
        "feedback": manifest.feedback.model_dump() if manifest.feedback else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(_summary_md(summary))
    written += [out / "summary.json", out / "summary.md"]
    return written


def _plot_examples(
    out: Path,
    manifest: artifact.Manifest,
    model: Any,
    xs: np.ndarray,
    errors: np.ndarray,
    labels: np.ndarray,
) -> Path:
    """``reconstructions.png``: held-out images over their reconstructions (and denoising)."""
    assert manifest.image_shape is not None
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    is_anom = labels != 0
    picks = _pick_examples(errors, labels)
    originals = xs[picks]
    rows: list[tuple[str, np.ndarray]] = [("original", originals)]
    if manifest.denoise:
        rng = np.random.default_rng(0)
        noise = rng.normal(scale=manifest.denoise, size=originals.shape).astype(np.float32)
        noisy = originals + noise
        rows.append((f"noisy (σ={manifest.denoise:g})", noisy))
        rows.append(
            ("denoised", np.asarray(decoder(encoder(noisy, training=False), training=False)))
        )
    rows.append(("reconstruction", np.asarray(model(originals, training=False))))
    captions = [
        f"{'ANOMALY' if is_anom[i] else 'normal'}\nerror {errors[i]:.3g}"
        + (" (flagged)" if errors[i] > manifest.threshold else "")
        for i in picks
    ]
    heading = (
        "Held-out examples, low to high reconstruction error "
        f"(threshold {manifest.threshold:.3g}; above it = flagged)"
    )
    path = out / "reconstructions.png"
    plot_reconstructions(path, rows, manifest.image_shape, captions, heading)
    return path


def calibration_basis(manifest: Any) -> str:
    """What the threshold's percentile was taken over, in words."""
    n = manifest.calibration.n
    outliers = int(manifest.validation_metrics.get("calibration_outliers", 0))
    left_out = f", {outliers} far-out errors left out" if outliers else ""
    if manifest.hyperparameters.get("calibration") == "cross_fit":
        folds = manifest.hyperparameters.get("calibration_folds", "?")
        return f"{n} out-of-fold errors of normal rows ({folds}-fold cross-fitting{left_out})"
    return f"{n} held-out normal rows" + (f" ({left_out[2:]})" if outliers else "")


def _summary_md(s: dict[str, Any]) -> str:
    r = s["rows"]
    lines = [
        f"# {s['title']}: {s['version']}",
        "",
        f"- model: {s['architecture']} autoencoder, {s['features']} features -> latent {s['latent_dim']}, "
        f"loss {s['loss']}"
        + (f", denoising (noise {s['denoise']:g})" if s["denoise"] else "")
        + f"; score = {score_words(s['error'], s.get('score', 'mean'))}",
        f"- threshold: {s['threshold']:.6g} (the {s['percentile']:g}th percentile of "
        f"{s['calibration_basis']})",
        f"- rows: {r['total']} total, {r['train']} train, {r['validation']} validation, "
        f"{r['calibration']} calibration, {r['excluded_labelled']} labelled anomalies left out",
    ]
    vm = s["validation_metrics"]
    if vm:
        lines.append("- validation: " + ", ".join(f"{k} {v:.4g}" for k, v in vm.items()))
    if s.get("metrics"):
        m = s["metrics"]
        lines.append(
            "- evaluation: "
            + ", ".join(
                f"{k} {m[k]:.4f}"
                for k in ("precision", "recall", "f1", "roc_auc", "pr_auc")
                if m.get(k) is not None
            )
        )
    lines += ["", "## Pictures", ""]
    lines += [f"![{f}]({f})" for f in s["files"]]
    if s["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"
