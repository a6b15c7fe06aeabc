"""The model directory: versions, CURRENT, atomic publish, promote and prune.

A model directory looks like this::

    MODEL_DIR/
      CURRENT                 # name of the current version, replaced atomically
      versions/v1/            # immutable once published (see `anomaly_contract.artifact`)
      versions/v2/ ...

A version is written into a staging directory and renamed into ``versions/`` in one step, then
``CURRENT`` is replaced with ``os.replace``: a reader polling the directory sees the old version or
the new one, never a half-written or mixed one, even when the writer is killed midway.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from anomaly_contract.artifact import (
    CURRENT_FILE,
    DEFAULT_KEEP,
    DENSE_WEIGHTS_FILE,
    FORMAT_VERSION,
    LAYERS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_FILE,
    SCALER_FILE,
    VERSIONS_DIR,
    Manifest,
    ModelBundle,
    Scaler,
    ScalerParams,
)
from anomaly_contract.engines import DenseEngine, Engine, check_zip, load_keras_model
from anomaly_contract.errors import ArtifactError, VersionNotFoundError
from anomaly_contract.layer_engine import LayerEngine
from anomaly_contract.onnx_engine import OnnxEngine, export_onnx

if TYPE_CHECKING:  # pragma: no cover
    import keras


# Reading a model directory
# --------------------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    created_at: datetime | None
    threshold: float | None
    is_current: bool


def version_number(name: str) -> int:
    """3 for ``v3``; any other name is refused. The one rule for version names, here and on the
    model topic."""
    m = _VERSION_RE.match(name)
    if not m:
        raise VersionNotFoundError(f"{name!r} is not a version name (expected v1, v2, ...)")
    return int(m.group(1))


def check_version_name(name: str) -> None:
    """Refuse a name that is not ``v<N>``."""
    version_number(name)


def version_sort_key(name: str) -> tuple[int, str]:
    """Sorts versions by number (``v10`` after ``v9``); odd names first."""
    return (int(name[1:]), name) if _VERSION_RE.match(name) else (-1, name)


def normalize_version(name: str) -> str:
    """Accept ``v3`` or ``3``."""
    name = name.strip()
    return f"v{int(name)}" if name.isdigit() else name


def current_version(model_dir: str | os.PathLike[str]) -> str | None:
    """The name in CURRENT, or None when nothing has been published."""
    try:
        name = (Path(model_dir) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def _version_dirs(model_dir: Path) -> list[Path]:
    vdir = model_dir / VERSIONS_DIR
    if not vdir.is_dir():
        return []
    dirs = [p for p in vdir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    return sorted(dirs, key=lambda p: version_number(p.name))


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest of a version directory."""
    mpath = Path(path) / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(mpath.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{mpath} is missing: this is not a published model version") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(
            f"{mpath} does not follow artifact format {FORMAT_VERSION}: {where}: {first['msg']}"
        ) from exc


def list_versions(model_dir: str | os.PathLike[str]) -> list[VersionInfo]:
    model_dir = Path(model_dir)
    current = current_version(model_dir)
    out = []
    for p in _version_dirs(model_dir):
        try:
            m = read_manifest(p)
            created, threshold = m.created_at, m.threshold
        except ArtifactError:
            created, threshold = None, None
        out.append(VersionInfo(p.name, p, created, threshold, p.name == current))
    return out


def load_version_dir(path: str | os.PathLike[str], *, prefer_keras: bool = False) -> ModelBundle:
    """Load one version directory (manifest, scaler, and its NumPy engine or the Keras model).

    ``prefer_keras`` scores through TensorFlow even when a NumPy form exists (for comparisons).
    A version without a NumPy form (published before it existed) needs TensorFlow; without it
    the load is refused in one line naming the missing form.
    """
    path = Path(path)
    manifest = read_manifest(path)
    try:
        scaler = Scaler.from_params(
            ScalerParams.model_validate_json((path / SCALER_FILE).read_bytes())
        )
    except (FileNotFoundError, ValidationError) as exc:
        raise ArtifactError(f"{path / SCALER_FILE} is missing or invalid: {exc}") from exc
    if len(scaler.offset) != manifest.n_features:
        raise ArtifactError(
            f"{path}: scaler has {len(scaler.offset)} features, manifest {manifest.n_features}"
        )
    engine = None if prefer_keras else load_engine(path, manifest)
    if engine is not None:
        return ModelBundle(manifest=manifest, scaler=scaler, path=path, engine=engine)
    if not prefer_keras and not tensorflow_installed():
        raise ArtifactError(
            f"{path} has no NumPy inference form ({DENSE_WEIGHTS_FILE} or {LAYERS_FILE}) and "
            "TensorFlow is not installed: republish it with a current anomaly-trainer, or "
            "install kafka-anomaly[train]"
        )
    model = load_keras_model(path / MODEL_FILE, manifest.input_shape)
    return ModelBundle(manifest=manifest, scaler=scaler, path=path, _model=model)


def tensorflow_installed() -> bool:
    """Whether Keras and TensorFlow can be imported here (without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("keras", "tensorflow"))


def load_engine(path: Path, manifest: Manifest) -> Engine | None:
    """The version's NumPy engine, checked against its manifest; None when it has none."""
    engine: Engine
    if (path / DENSE_WEIGHTS_FILE).is_file():
        form = path / DENSE_WEIGHTS_FILE
        check_zip(form)
        try:
            engine = DenseEngine.load(form)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{form} cannot be loaded: {exc}") from exc
    elif (path / LAYERS_FILE).is_file():
        form = path / LAYERS_FILE
        check_zip(form)
        layers = LayerEngine.load(form)
        graph = OnnxEngine.load(path / ONNX_FILE, layers) if (path / ONNX_FILE).is_file() else None
        engine = layers if graph is None else graph
        if graph is not None:
            _check_engine_shapes(layers, manifest, form)
            form = path / ONNX_FILE
    else:
        return None
    if (path / MODEL_FILE).exists():
        check_zip(path / MODEL_FILE)
    _check_engine_shapes(engine, manifest, form)
    return engine


def _check_engine_shapes(engine: Engine, manifest: Manifest, form: Path) -> None:
    """One row through the engine: it must map the manifest's inputs onto themselves and
    encode to ``latent_dim`` values (a mismatched file fails here, not on the first record)."""
    probe = np.zeros((1, manifest.input_size), dtype=np.float64)
    try:
        rec = engine.reconstruct(probe)
        codes = engine.encode(probe)
    except (ValueError, IndexError) as exc:
        raise ArtifactError(f"{form} does not fit the manifest's inputs: {exc}") from exc
    if rec.shape != (1, manifest.input_size):
        raise ArtifactError(
            f"{form} maps {manifest.input_size} inputs to {rec.shape[1]} outputs, "
            f"manifest inputs hold {manifest.input_size}"
        )
    if codes.reshape(1, -1).shape[1] != manifest.latent_dim:
        raise ArtifactError(
            f"{form} encodes to {codes.reshape(1, -1).shape[1]} values, "
            f"manifest latent_dim is {manifest.latent_dim}"
        )


def load_bundle(model_dir: str | os.PathLike[str], version: str | None = None) -> ModelBundle:
    """Load ``version`` (default: the current one) from a model directory."""
    return load_version_dir(version_dir(model_dir, version))


def version_dir(model_dir: str | os.PathLike[str], version: str | None = None) -> Path:
    """The directory of ``version`` (``v3`` or ``3``; default: the current one): the one
    version resolver, for loading and for publishing to a model topic."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtifactError(
            f"model directory {model_dir} does not exist: run `anomaly-trainer fit`"
        )
    name = normalize_version(version) if version else current_version(model_dir)
    if name is None:
        raise ArtifactError(f"{model_dir} has no current version: run `anomaly-trainer fit` first")
    path = model_dir / VERSIONS_DIR / name
    if not path.is_dir():
        raise VersionNotFoundError(
            f"version {name} not found in {model_dir}: see `anomaly-trainer versions`"
        )
    return path


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


@contextlib.contextmanager
def staging_dir(model_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A private directory inside MODEL_DIR to write a version into; removed if not published."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    _cleanup_stale_staging(model_dir)
    path = model_dir / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _cleanup_stale_staging(model_dir: Path) -> None:
    """Remove staging directories left by writers that died (their pid no longer exists)."""
    for p in model_dir.glob(".staging-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def write_version_files(
    staging: Path, model: keras.Model, scaler: Scaler, manifest: Manifest
) -> None:
    """Write the files of a version into ``staging`` (manifest last)."""
    model.save(staging / MODEL_FILE)
    dense = DenseEngine.from_keras(model)
    if dense is not None:
        dense.save(staging / DENSE_WEIGHTS_FILE)
    else:
        layers = LayerEngine.from_keras(model)
        if layers is not None:
            layers.save(staging / LAYERS_FILE)
            export_onnx(model, staging / ONNX_FILE)  # faster where it runs (see the README)
    (staging / SCALER_FILE).write_text(scaler.to_params().model_dump_json(indent=2))
    (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))


def next_version_name(model_dir: str | os.PathLike[str]) -> str:
    dirs = _version_dirs(Path(model_dir))
    return f"v{version_number(dirs[-1].name) + 1 if dirs else 1}"


def publish_staged(
    model_dir: str | os.PathLike[str],
    staging: Path,
    *,
    keep: int = DEFAULT_KEEP,
    make_current: bool = True,
) -> str:
    """Move a fully written staging directory into ``versions/`` and make it current.

    The manifest in ``staging`` must carry the version name returned by `next_version_name`; if
    another writer took that name meanwhile the caller gets an ArtifactError and nothing changes.
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(staging)
    vroot = model_dir / VERSIONS_DIR
    vroot.mkdir(parents=True, exist_ok=True)
    target = vroot / manifest.version
    _fsync_tree(staging)
    if target.exists():
        raise ArtifactError(f"version {manifest.version} already exists in {model_dir}")
    try:
        os.rename(staging, target)  # atomic; fails if a concurrent writer created target
    except OSError as exc:
        raise ArtifactError(f"could not publish {manifest.version}: {exc}") from exc
    _fsync_dir(vroot)
    if make_current:
        set_current(model_dir, manifest.version)
    prune_versions(model_dir, keep=keep)
    return manifest.version


def set_current(model_dir: str | os.PathLike[str], version: str) -> None:
    """Point CURRENT at an existing version (the rollback primitive)."""
    model_dir = Path(model_dir)
    name = normalize_version(version)
    version_number(name)
    path = model_dir / VERSIONS_DIR / name
    if not path.is_dir():
        raise VersionNotFoundError(
            f"version {name} not found in {model_dir}: see `anomaly-trainer versions`"
        )
    read_manifest(path)  # refuse to point at something that is not a valid version
    _write_atomic(model_dir / CURRENT_FILE, (name + "\n").encode())


def prune_versions(model_dir: str | os.PathLike[str], keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete all but the newest ``keep`` versions; the current one is always kept."""
    if keep <= 0:
        return []
    model_dir = Path(model_dir)
    current = current_version(model_dir)
    dirs = _version_dirs(model_dir)
    removed = []
    for p in dirs[:-keep]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def utc_now() -> datetime:
    return datetime.now(UTC)
