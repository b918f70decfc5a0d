"""The model registry: versioned, checksummed model artifacts behind one atomically replaced pointer.

Addressed by URI through ``pyarrow.fs.FileSystem.from_uri`` (a plain path is local; ``s3://…`` or
``gs://…`` work the same way without code changes). Layout::

    <root>/
      CURRENT                      the serving version id ("v0003\\n"), replaced atomically
      versions/
        v0003/
          model.safetensors        the encoder's state_dict (safetensors; no pickles anywhere)
          config.json, tokenizer.json, vocab.txt, ...   copied from the base model folder
          items.safetensors        {"vectors": float32 [n_items, dim]} made by this encoder
          items.json               the item ids, in row order
          item_texts.json          the text each vector was encoded from, in row order: a worker
                                   swapping in this version takes these vectors instead of encoding
                                   the same texts again (versions published before it lack it)
          manifest.json            version, parent, base model, data window, metrics, created time,
                                   and the sha256 of every other file
        v0002.tmp-<uuid>/          a publish in progress (or a crash mid-publish): never loaded

Publishing writes the folder aside, renames it into ``versions/<v>``, then replaces ``CURRENT``
(write a temporary file, rename over): a crash at any point leaves ``CURRENT`` naming a complete
version. :meth:`Registry.load` verifies every checksum and raises :class:`ArtifactRefused` on any
mismatch or missing file. The last ``keep`` versions are kept; the current one is never deleted.
Version ids are ``v0001``, ``v0002``, ... in publish order.

On object stores a "rename" of a folder is a copy; the pointer swap stays the commit point.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyarrow import fs as pafs
from safetensors.torch import load_file, save_file

from coldstart.contract import redact_uri
from coldstart.errors import ArtifactRefused, ConfigError
from coldstart.failpoints import crash_point

CURRENT = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
ITEMS_FILE = "items.safetensors"
ITEM_IDS_FILE = "items.json"
ITEM_TEXTS_FILE = "item_texts.json"
_VERSION = re.compile(r"^v(\d{4,})$")
# Files of a base model folder that are never copied: weights (ours replace them), pickles, our own files.
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack",
                  ".onnx", ".tmp")
_SKIP_NAMES = {MANIFEST, ITEM_IDS_FILE, ITEM_TEXTS_FILE, "README.md"}


@dataclass(frozen=True)
class LoadedVersion:
    """A verified version, on local disk: ``TextEncoder(path, version=version)`` loads its encoder."""

    version: str
    path: Path
    item_ids: list[str]
    item_vectors: torch.Tensor
    manifest: dict[str, Any]
    item_texts: list[str] | None = None  # what each item vector was encoded from (None: not shipped)


class Registry:
    def __init__(self, uri: str | os.PathLike, keep: int = 5, cache_dir: Path | None = None) -> None:
        if keep < 1:
            raise ConfigError("the registry must keep at least one version")
        self.uri = str(uri)
        self.keep = keep
        self.fs, self.root = _filesystem(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._cache_dir = cache_dir
        self.fs.create_dir(f"{self.root}/{VERSIONS}", recursive=True)

    # ---------------------------------------------------------------------------------- reads
    def list_versions(self) -> list[str]:
        """Complete versions (folders named ``vNNNN``), oldest first."""
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{VERSIONS}", allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory and _VERSION.match(i.base_name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        """The version named by ``CURRENT``, or None before the first publish."""
        try:
            with self.fs.open_input_stream(f"{self.root}/{CURRENT}") as fh:
                text = fh.read().decode().strip()
        except FileNotFoundError:
            return None
        return text or None

    def version_uri(self, version: str) -> str:
        """Where a version lives, as a URI that :class:`Registry` (or a worker) can open."""
        return f"{self.uri.rstrip('/')}/{VERSIONS}/{version}"

    def manifest(self, version: str) -> dict[str, Any]:
        try:
            with self.fs.open_input_stream(f"{self._vdir(version)}/{MANIFEST}") as fh:
                return json.loads(fh.read())
        except FileNotFoundError as exc:
            raise ArtifactRefused(f"version {version}: no {MANIFEST} in {redact_uri(self.version_uri(version))}") from exc
        except json.JSONDecodeError as exc:
            raise ArtifactRefused(f"version {version}: {MANIFEST} is not valid JSON ({exc})") from exc

    def load(self, version: str | None = None) -> LoadedVersion:
        """Fetch (if remote) and verify a version, CURRENT by default; ArtifactRefused if it does not verify."""
        version = version or self.current()
        if version is None:
            raise ArtifactRefused(f"the registry at {redact_uri(self.uri)} has no current version; publish one first")
        if not _VERSION.match(version):
            raise ArtifactRefused(f"{version!r} is not a version id (vNNNN)")
        manifest = self.manifest(version)
        if manifest.get("version") != version:
            raise ArtifactRefused(f"version {version}: manifest names version {manifest.get('version')!r}")
        files = manifest.get("files")
        if not isinstance(files, dict) or MODEL_FILE not in files or ITEMS_FILE not in files:
            raise ArtifactRefused(f"version {version}: manifest lists no {MODEL_FILE}/{ITEMS_FILE}")
        path = self._local_copy(version)
        for name, expected in sorted(files.items()):
            local = path / name
            if not local.is_file():
                raise ArtifactRefused(f"version {version}: {name} is missing")
            actual = _sha256(local)
            if actual != expected:
                raise ArtifactRefused(f"version {version}: sha256 of {name} is {actual[:12]}…, "
                                      f"the manifest says {str(expected)[:12]}… (corrupt or tampered)")
        try:
            vectors = load_file(str(path / ITEMS_FILE))["vectors"]
            ids = json.loads((path / ITEM_IDS_FILE).read_text())
            texts = json.loads((path / ITEM_TEXTS_FILE).read_text()) if ITEM_TEXTS_FILE in files else None
        except Exception as exc:  # safetensors/JSON errors: a checksummed file that still does not parse
            raise ArtifactRefused(f"version {version}: item files unreadable ({exc})") from exc
        if len(ids) != vectors.shape[0] or (texts is not None and len(texts) != len(ids)):
            raise ArtifactRefused(f"version {version}: {len(ids)} item ids, {vectors.shape[0]} vectors and "
                                  f"{'no' if texts is None else len(texts)} texts")
        return LoadedVersion(version, path, ids, vectors, manifest, texts)

    # ---------------------------------------------------------------------------------- writes
    def publish(self, state_dict: Mapping[str, torch.Tensor], *, base_dir: Path | str,
                item_ids: Sequence[str], item_vectors: torch.Tensor, item_texts: Sequence[str] | None = None,
                parent: str | None = None, base_model: str = "", data_window: tuple[float, float] | None = None,
                metrics: Mapping[str, float] | None = None, extra: Mapping[str, Any] | None = None,
                make_current: bool = True) -> str:
        """Write a new version and (by default) make it current; returns its id.

        ``base_dir`` is the local model folder the encoder was loaded from: its config and tokenizer files
        are copied (its weights are not; ``state_dict`` replaces them). ``item_texts``: the text each item
        vector was encoded from (workers then reuse the vectors instead of encoding those texts again).
        """
        if item_vectors.ndim != 2 or item_vectors.shape[0] != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but item vectors of shape {tuple(item_vectors.shape)}")
        if item_texts is not None and len(item_texts) != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but {len(item_texts)} item texts")
        version = self._next_version()
        aside = f"{self.root}/{VERSIONS}/{version}.tmp-{uuid.uuid4().hex}"
        if self.local:  # stage in place: one write of the weights, fsynced before the rename
            stage = Path(aside)
            stage.mkdir(parents=True)
            try:
                self._stage(stage, version, state_dict, base_dir, item_ids, item_vectors, item_texts, parent,
                            base_model, data_window, metrics, extra)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        else:
            with tempfile.TemporaryDirectory(prefix=f"coldstart-{version}-") as tmp:
                self._stage(Path(tmp), version, state_dict, base_dir, item_ids, item_vectors, item_texts,
                            parent, base_model, data_window, metrics, extra)
                self._upload(Path(tmp), aside)
        self._rename(aside, self._vdir(version))
        crash_point("after_version_rename")
        if make_current:
            self.set_current(version)
            crash_point("after_current")
        self._prune()
        return version

    def set_current(self, version: str) -> None:
        """Point CURRENT at an existing, verified version (publish, or rollback)."""
        if version not in self.list_versions():
            raise ArtifactRefused(f"no version {version!r} in {redact_uri(self.uri)} (have {self.list_versions()})")
        self.load(version)  # never point at something that would be refused
        target = f"{self.root}/{CURRENT}"
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        self._write(tmp, f"{version}\n".encode())
        try:
            self._rename(tmp, target)
        except BaseException:
            self._delete_file(tmp)
            raise

    # ---------------------------------------------------------------------------------- internals
    def _stage(self, stage: Path, version: str, state_dict: Mapping[str, torch.Tensor], base_dir: Path | str,
               item_ids: Sequence[str], item_vectors: torch.Tensor, item_texts: Sequence[str] | None,
               parent: str | None, base_model: str, data_window: tuple[float, float] | None, metrics: Mapping[str, float] | None,
               extra: Mapping[str, Any] | None) -> None:
        _copy_model_files(Path(base_dir), stage)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(stage / MODEL_FILE), metadata={"format": "pt"})
        save_file({"vectors": item_vectors.detach().to("cpu", torch.float32).contiguous()},
                  str(stage / ITEMS_FILE), metadata={"format": "pt"})
        (stage / ITEM_IDS_FILE).write_text(json.dumps(list(item_ids)))
        if item_texts is not None:
            (stage / ITEM_TEXTS_FILE).write_text(json.dumps(list(item_texts)))
        files = {p.relative_to(stage).as_posix(): _sha256(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        manifest = {
            "version": version,
            "parent": parent,
            "base_model": base_model,
            "created_ts": time.time(),
            "data_window": list(data_window) if data_window else None,
            "metrics": dict(metrics or {}),
            "n_items": len(item_ids),
            "dim": int(item_vectors.shape[1]),
            "files": files,
            **dict(extra or {}),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if self.local:
            for p in stage.rglob("*"):
                fsync_path(p)
            fsync_path(stage)

    def _vdir(self, version: str) -> str:
        return f"{self.root}/{VERSIONS}/{version}"

    def _rename(self, src: str, dst: str) -> None:
        # One place for every rename, so a test can make it fail (a simulated crash).
        self.fs.move(src, dst)

    def _next_version(self) -> str:
        # Counting temp folders too keeps ids monotone even after a crash mid-publish.
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{VERSIONS}", allow_not_found=True))
        numbers = [int(m.group(1)) for i in infos if (m := re.match(r"^v(\d{4,})", i.base_name))]
        return f"v{max(numbers, default=0) + 1:04d}"

    def _prune(self, stale_after_s: float = 3600.0) -> None:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{VERSIONS}", allow_not_found=True))
        for info in infos:
            # Folders left by a crash mid-publish; a live publish is younger than an hour.
            if ".tmp-" in info.base_name and info.mtime is not None \
                    and time.time() - info.mtime.timestamp() > stale_after_s:
                if info.type == pafs.FileType.Directory:
                    self.fs.delete_dir(info.path)
        versions = self.list_versions()
        current = self.current()
        excess = len(versions) - self.keep
        for version in versions:
            if excess <= 0:
                break
            if version == current:
                continue
            self.fs.delete_dir(self._vdir(version))
            excess -= 1

    def _write(self, path: str, data: bytes) -> None:
        if self.local:
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            with self.fs.open_output_stream(path) as fh:
                fh.write(data)

    def _upload(self, stage: Path, dest: str) -> None:
        self.fs.create_dir(dest, recursive=True)
        for p in sorted(stage.rglob("*")):
            rel = p.relative_to(stage).as_posix()
            if p.is_dir():
                self.fs.create_dir(f"{dest}/{rel}", recursive=True)
            else:
                self._write(f"{dest}/{rel}", p.read_bytes())

    def _delete_file(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    def _local_copy(self, version: str) -> Path:
        if self.local:
            path = Path(self._vdir(version))
            if not path.is_dir():
                raise ArtifactRefused(f"version {version} is not in {redact_uri(self.uri)}")
            return path
        cache = self._cache_dir or Path(tempfile.gettempdir()) / "coldstart-registry"
        dest = cache / version
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            pafs.copy_files(self._vdir(version), str(dest), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        except (OSError, FileNotFoundError) as exc:
            raise ArtifactRefused(f"version {version}: cannot fetch from {redact_uri(self.uri)} ({exc})") from exc
        return dest


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:  # a plain path: local, relative to the working directory
        path = Path(uri).expanduser().resolve()
        return pafs.LocalFileSystem(), path.as_posix()
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for unknown schemes
        raise ConfigError(f"COLDSTART_REGISTRY_URI={uri!r} is not a usable filesystem URI ({exc})") from exc
    return filesystem, root.rstrip("/")


def _copy_model_files(base: Path, dest: Path) -> None:
    if not (base / "config.json").is_file():
        raise ConfigError(f"{base} is not a model folder (no config.json)")
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if p.is_dir() or p.name in _SKIP_NAMES or p.name.endswith(_SKIP_SUFFIXES) or rel.parts[0].startswith("."):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
