"""The border demo reads a failed download and undelivered notifications from the audit log."""

from __future__ import annotations

from pathlib import Path

from tcu.demo.border import PROFILES, _read_audit
from tcu.esim import AuditLog


def test_a_failed_download_and_undelivered_notifications_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("decision", {"decision": "download", "target": PROFILES["de-ts48"]})
    log.append("download", {"step": "failed", "failed_step": "authenticateClient", "error": "8.2.6"})
    log.append("outcome", {"ok": False, "error": "download failed"})
    log.append("notifications", {"delivered": [1], "pending": [2, 3]})
    count = _read_audit(path)
    assert count.downloads == [] and count.download_failures == ["authenticateClient: 8.2.6"]
    assert count.failed == ["download de-ts48"] and count.switches == []
    assert count.notifications_pending == 2
    # and the good case the demo expects
    log.append("decision", {"decision": "download", "target": PROFILES["de-ts48"]})
    log.append("download", {"step": "done", "iccid": PROFILES["de-ts48"]})
    log.append("notification", {"delivered": True, "removed": True})
    log.append("outcome", {"ok": True})
    log.append("notifications", {"delivered": [2, 3], "pending": []})
    count = _read_audit(path)
    assert count.downloads == ["de-ts48"] and count.switches == ["de-ts48"]
    assert count.notifications_pending == 0 and count.notifications_delivered == 1
