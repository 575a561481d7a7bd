"""The station's manufacturing log: one JSON line per finished job, appended and fsync'd."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from broker_agent.logs import get_logger
from broker_agent.station.job import JobResult
from firmware_contracts.payloads import utc_timestamp

log = get_logger(__name__)


class ManufacturingLog:
    """``<path>``: one JSON object per finished job, appended, fsync'd line by line.

    Holds what a production record needs (who, which board, where, which image by MD5, how
    it ended) and never the image, its keys or a credential: ``encrypted`` only says whether
    the board got an encrypted image and its nvs_keys (None when the job failed before the
    table was read). Each line is one ``write`` on an
    ``O_APPEND`` descriptor, so a station and a ``flash`` command may share the file.
    """

    def __init__(self, path: Path, station_id: str) -> None:
        self.path = path
        self.station_id = station_id
        self._lock = threading.Lock()

    def record(self, result: JobResult) -> dict[str, Any]:
        request, error, partition = result.request, result.error, result.partition
        return {
            "ts": utc_timestamp(),
            "station_id": self.station_id,
            "request_id": request.request_id,
            "device_id": result.device_id,
            "port": request.port,
            "chip": result.chip_type,
            "mac": result.mac,
            "partition_offset": partition.offset if partition else None,
            "partition_size": partition.size if partition else None,
            "md5": result.outcome.md5 if result.outcome else None,
            "skipped": result.outcome.skipped if result.outcome else False,
            "encrypted": result.encrypted,
            "result": "ok" if result.ok else "error",
            "error_code": error.code.value if error else None,
            "error_phase": error.phase.value if error else None,
            "duration_s": result.duration_s,
        }

    def append(self, result: JobResult) -> None:
        """Append the job's line; a failure is logged, never raised (the board is done)."""
        line = json.dumps(self.record(result), separators=(",", ":")) + "\n"
        try:
            with self._lock:
                self._append_line(line.encode("utf-8"))
        except OSError as exc:
            log.error(
                "manufacturing_log_failed",
                path=str(self.path),
                request_id=result.request.request_id,
                error=exc.strerror or str(exc),
            )

    def _append_line(self, data: bytes) -> None:
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the new directory entry must survive a power cut too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
