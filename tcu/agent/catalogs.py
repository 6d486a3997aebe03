"""The signal catalogs that spooled batches were built with, kept next to the spool.

Every batch names its catalog by ``catalog_id`` (a content hash of the DBC files and
the VSS mapping), and the ingest reads a batch's columns against a catalog announced
in the stream's ``Hello``. After an update of a DBC or of the mapping the agent starts
with a new catalog while batches of the old one may still wait in the spool; so the
agent keeps each catalog it spools batches with in ``<spool dir>/catalogs/<id>.pb``
(a serialised ``SignalCatalog``, written atomically and fsync-ed before the first
batch of that catalog is appended), announces the older ones in
``Hello.previous_catalogs``, and removes their files once the spool holds no unacked
batch.

A file that cannot be read or parsed, or whose content is not the catalog its name
says (the id is a hash of the signals, so a damaged or truncated file is caught),
is logged (path and reason) and skipped, never fatal: spooled batches of that
catalog are then quarantined by the ingest (kept as bytes, not decoded, as for any
batch of a catalog the Hello did not announce).
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from google.protobuf.message import DecodeError

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import TcuError
from tcu.fsutil import fsync_directory, write_atomic
from tcu.signals.mapping import catalog_hash

__all__ = ["CatalogFileError", "CatalogFiles", "content_hash"]

log = logging.getLogger(__name__)

_SUFFIX = ".pb"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def content_hash(catalog: telemetry_pb.SignalCatalog) -> str:
    """The id :func:`~tcu.signals.mapping.build_catalog` gives a catalog of these signals."""
    return catalog_hash(
        (
            s.signal_id,
            s.name,
            s.unit,
            s.source,
            s.period_ms,
            s.resolution,
            "string" if s.type == telemetry_pb.VALUE_TYPE_STRING else "double",
        )
        for s in catalog.signals
    )


class CatalogFileError(TcuError):
    """A catalog file could not be written (the path and the OS error say why)."""


class CatalogFiles:
    """``directory/<catalog_id>.pb`` for each catalog that batches in the spool may name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, catalog_id: str) -> Path:
        return self.directory / f"{catalog_id}{_SUFFIX}"

    def load(self) -> dict[str, telemetry_pb.SignalCatalog]:
        """Every readable catalog file by id; unusable files are logged with the reason and skipped."""
        found: dict[str, telemetry_pb.SignalCatalog] = {}
        try:
            paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        except OSError as exc:
            log.error("catalog files: cannot list %s: %s", self.directory, exc.strerror or exc)
            return found
        for path in paths:
            catalog_id = path.name[: -len(_SUFFIX)]
            try:
                data = path.read_bytes()
                catalog = telemetry_pb.SignalCatalog.FromString(data)
            except OSError as exc:
                problem = f"cannot read it: {exc.strerror or exc}"
            except DecodeError as exc:
                problem = f"not a SignalCatalog: {exc}"
            else:
                content_id = content_hash(catalog)
                if catalog.catalog_id != catalog_id:
                    problem = f"it holds catalog {catalog.catalog_id!r}, not {catalog_id!r}"
                elif content_id != catalog_id:
                    problem = f"its signals hash to {content_id}, not {catalog_id} (damaged or truncated)"
                else:
                    found[catalog_id] = catalog
                    continue
            log.error(
                "catalog file %s skipped: %s; spooled batches of catalog %s cannot be announced, so the"
                " ingest will quarantine them undecoded",
                path,
                problem,
                catalog_id,
            )
        return found

    def save(self, catalog: telemetry_pb.SignalCatalog) -> None:
        """Write the catalog's file atomically (tmp file, fsync, rename, fsync of the directory)."""
        if not _SAFE_ID.fullmatch(catalog.catalog_id):
            raise CatalogFileError(f"catalog id {catalog.catalog_id!r} cannot be a file name")
        path = self.path(catalog.catalog_id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, catalog.SerializeToString(deterministic=True))
        except OSError as exc:
            raise CatalogFileError(f"{path}: cannot write catalog file: {exc.strerror or exc}") from exc

    def remove_except(self, keep_id: str) -> list[str]:
        """Remove every catalog file but ``keep_id``'s (and stray temporary files); the ids removed."""
        removed: list[str] = []
        try:
            paths = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return removed
        except OSError as exc:
            log.warning("catalog files: cannot list %s: %s", self.directory, exc.strerror or exc)
            return removed
        for path in paths:
            if path.name == f"{keep_id}{_SUFFIX}" or not path.name.endswith((_SUFFIX, f"{_SUFFIX}.tmp")):
                continue
            try:
                path.unlink()
            except OSError as exc:
                log.warning("catalog files: cannot remove %s: %s", path, exc.strerror or exc)
                continue
            if path.name.endswith(_SUFFIX):
                removed.append(path.name[: -len(_SUFFIX)])
        if removed:
            with contextlib.suppress(OSError):
                fsync_directory(self.directory)
        return removed
