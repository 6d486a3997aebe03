"""``tcu demo --scenario border``: the cross-border eSIM roaming drive, end to end.

The simulator (``python -m sim --modem``, see ``sim/border.py``) drives the A31 from
Thionville into Luxembourg, round Luxembourg City and over the Sauer into Germany to
Trier, with a modem and an eUICC on a pseudo-terminal. The car starts in France on the
French profile; in Luxembourg the policy localises to the Luxembourg profile, which never
attaches there, so the TCU rolls back to the French one (roaming); a tunnel on the A1 is a
short coverage hole; Germany is a country where the card holds no profile at the start: the
policy downloads one (the TS.48 test profile) from a real SM-DP+, osmo-smdpp, which the demo
starts on loopback (:mod:`tcu.demo.smdpp`; the card carries the eUICC certificate of the same
test certificate set), enables it and the car attaches on it. The ES9+ calls go straight to
osmo-smdpp on loopback, not through the simulated cellular data path. The agent runs
the roaming loop (:mod:`tcu.agent.connectivity`) with the policy written here, its
telemetry goes through the on-disk spool, and the connectivity events travel with it.

Checked after the drive (all must hold for exit 0, besides no CAN sample lost):

* the audit log's hash chain verifies (:func:`tcu.esim.verify`);
* the switches the policy asked for and the card performed are exactly
  :data:`EXPECTED_SWITCHES` (the German one by download), and exactly one rollback happened
  (:data:`EXPECTED_ROLLBACKS`);
* exactly one profile was downloaded (``profiles_downloaded``), no download failed, and the
  card's notifications reached the SM-DP+ (``notifications_pending`` 0 at the last delivery);
* the ingest stored one ``Vehicle.Connectivity.ProfileSwitch`` event per performed switch
  and one ``Vehicle.Connectivity.Rollback`` per rollback;
* the agent's uplink went through the simulated modem's cellular data path
  (``python -m sim --data-proxy``, :mod:`sim.datalink`), which cuts the connection whenever
  the modem loses registration (tunnel, profile switches, the failed attach): the link went
  down at least once (``link_outages``; ``link_connections_cut``, ``link_refused`` count the
  connections it cut and refused) and the agent ended with no batch left unacknowledged.

The profile ICCIDs repeat ``sim/border.py`` (``tcu`` never imports ``sim``); a test checks
that they match.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcu.demo.procs import DemoError, Proc
from tcu.demo.scenario import Scenario, ScenarioContext, register
from tcu.demo.smdpp import SERVER_NAME as SMDPP_NAME
from tcu.demo.smdpp import Smdpp, start_smdpp
from tcu.errors import TcuError
from tcu.esim import AuditError, verify
from tcu.fleet_client import query_series

__all__ = [
    "BORDER_DURATION_S",
    "BORDER_SPEED",
    "BORDER_START_AT",
    "BORDER_UPLINK_BACKOFF_MAX_S",
    "DOWNLOAD_MATCHING_ID",
    "EXPECTED_DOWNLOADS",
    "EXPECTED_ROLLBACKS",
    "EXPECTED_SWITCHES",
    "PROFILES",
    "BorderScenario",
    "roaming_policy_toml",
]

#: Where the drive starts: the last French motorway junction before Luxembourg on the A31.
BORDER_START_AT = "A31 Thionville"
#: Simulated seconds to drive: from Thionville the car enters Luxembourg after about 450 s
#: and Germany after about 1830 s (seeds 1, 2 and 7 measured); the rest leaves the German
#: switch time even when the simulator's modem answers slowly on a loaded machine.
BORDER_DURATION_S = 2300.0
#: Real-time factor of the drive (about a minute of wall time on a 2-core machine).
BORDER_SPEED = "60"

#: The agent's maximum reconnect backoff in the demo (wall seconds; see :meth:`BorderScenario.uplink_toml`).
BORDER_UPLINK_BACKOFF_MAX_S = 2.0

#: label → ICCID of the policy: the first three are installed on the simulated eUICC
#: (``sim/cellular.py``), ``de-ts48`` is downloaded in Germany (the TS.48 profile's ICCID).
PROFILES: dict[str, str] = {
    "bootstrap": "8988211000000000001",
    "fr-orange": "89330100001234567801",
    "lu-post": "89352010001234567802",
    "de-ts48": "8949449999999990049",
}
#: What osmo-smdpp serves the German profile as (a file of its ``smdpp-data/upp``).
DOWNLOAD_MATCHING_ID = "TS48V2-SAIP2-1-BERTLV-UNIQUE"

#: Profiles the policy switches to (and the card enables), in order; the last after its download.
EXPECTED_SWITCHES: tuple[str, ...] = ("lu-post", "de-ts48")
#: Profiles downloaded, in order.
EXPECTED_DOWNLOADS: tuple[str, ...] = ("de-ts48",)
#: Profiles rolled back to, in order (the Luxembourg profile never attaches).
EXPECTED_ROLLBACKS: tuple[str, ...] = ("fr-orange",)

CONNECTIVITY_PREFIX = "Vehicle.Connectivity."


def roaming_policy_toml(
    download_code: str = f"LPA:1$testsmdpplus1.example.com${DOWNLOAD_MATCHING_ID}",
) -> str:
    """The demo's roaming policy (times in simulated seconds: the agent's clock is GNSS)."""
    profiles = "\n".join(f'{label} = "{iccid}"' for label, iccid in PROFILES.items())
    return f"""# Roaming policy of the border demo (tcu demo --scenario border).
# Times are in GNSS seconds: the simulator's NMEA carries simulated time.
[policy]
min_dwell_s = 30                 # a new country counts after 30 s in it ...
min_border_distance_m = 500      # ... and 500 m from where it was first seen
attach_deadline_s = 90           # no registration on a new profile within 90 s: roll back
fallback_after_s = 300           # 5 min without any network: bootstrap profile
max_switches_per_hour = 4
retry_after_s = 3600             # a failed profile is not tried again in that country for 1 h
download_attempts = 3            # a missing preferred profile is downloaded at most 3 times ...
download_retry_s = 60            # ... a minute apart
fallback = "bootstrap"

[profiles]
{profiles}

# Countries are taken from the serving MCC while registered, from these boxes
# (lat_min, lon_min, lat_max, lon_max; first match wins) while not.
[countries.LU]
preferred = "lu-post"
bbox = [49.469, 5.73, 50.183, 6.50]

[countries.FR]
preferred = "fr-orange"
bbox = [42.3, -4.8, 49.469, 8.23]

[countries.DE]
preferred = "de-ts48"
download = "{download_code}"   # the card holds no German profile
bbox = [47.27, 6.50, 55.06, 15.04]
"""


@dataclass(slots=True)
class _AuditCount:
    entries: int = 0
    switches: list[str] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    download_failures: list[str] = field(default_factory=list)
    notifications_delivered: int = 0
    notifications_pending: int = 0
    """Pending on the card after the last delivery round."""
    es10_calls: int = 0
    errors: int = 0


def _label(iccid: str | None) -> str:
    return next((label for label, value in PROFILES.items() if value == iccid), iccid or "none")


def _read_audit(path: Path) -> _AuditCount:
    """Decisions paired with their outcome (the next ``outcome`` entry before the next decision)."""
    count = _AuditCount(entries=verify(path))
    pending: dict[str, Any] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        kind = entry.get("kind")
        if kind == "decision":
            pending = entry
        elif kind == "es10":
            count.es10_calls += 1
        elif kind == "download" and entry.get("step") == "done":
            count.downloads.append(_label(entry.get("iccid")))
        elif kind == "download" and entry.get("step") == "failed":
            count.download_failures.append(f"{entry.get('failed_step')}: {entry.get('error')}")
        elif kind == "notification" and entry.get("removed"):
            count.notifications_delivered += 1
        elif kind == "notifications":
            count.notifications_pending = len(entry.get("pending", []))
        elif kind == "error":
            count.errors += 1
        elif kind == "outcome" and pending is not None:
            target = _label(pending.get("target"))
            if not entry.get("ok"):
                count.failed.append(f"{pending.get('decision')} {target}")
            elif pending.get("decision") == "rollback":
                count.rollbacks.append(target)
            elif pending.get("decision") in ("switch", "fallback", "download"):
                count.switches.append(target)
            pending = None
    return count


class BorderScenario(Scenario):
    """``--scenario border``: simulator with ``--modem``, agent with ``[spool]`` and ``[connectivity]``."""

    def __init__(self) -> None:
        super().__init__(
            name="border",
            duration_s=BORDER_DURATION_S,
            speed=BORDER_SPEED,
            sim_args=["--modem", "--start-at", BORDER_START_AT],
        )
        self.smdpp: Smdpp | None = None

    @staticmethod
    def audit_path(workdir: Path) -> Path:
        return workdir / "esim-audit.jsonl"

    def prepare(self, workdir: Path) -> None:
        """Write the roaming policy into the work directory; a fresh audit log per run."""
        (workdir / "roaming.toml").write_text(roaming_policy_toml(), encoding="utf-8")
        self.audit_path(workdir).unlink(missing_ok=True)

    async def start_peers(self, workdir: Path, say: Callable[[str], None]) -> list[Proc]:
        """osmo-smdpp, the SM-DP+ the German profile is downloaded from (fails loudly without it)."""
        try:
            self.smdpp = await start_smdpp(workdir, say)
        except DemoError as exc:
            raise DemoError(f"border scenario: Germany's profile must be downloaded, but {exc}") from exc
        (workdir / "roaming.toml").write_text(
            roaming_policy_toml(self.smdpp.activation_code(DOWNLOAD_MATCHING_ID)), encoding="utf-8"
        )
        return [self.smdpp.proc]

    def ingest_sim_args(self, ingest_target: str) -> list[str]:
        """The simulated modem's cellular data path leads to the ingest; the card trusts the SM-DP+'s CI."""
        args = ["--data-proxy", ingest_target]
        if self.smdpp is not None:
            args += ["--euicc-credentials", str(self.smdpp.generated), "--notification-address", SMDPP_NAME]
        return args

    def uplink_target(self, ready: dict[str, Any], ingest_target: str) -> str:
        """The agent's uplink goes through the modem's data path (the port in the ready line)."""
        port = ready.get("data_proxy")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TcuError(f"the simulator's ready line names no data proxy port: {ready}")
        return f"127.0.0.1:{port}"

    def uplink_toml(self) -> str:
        """Reconnect within 2 s of wall time at most (the product default caps the backoff at 30 s).

        At 60 times real time the drive's outages last a fraction of a second to a few seconds
        of wall time, and 30 s of wall time would be half an hour of the simulated drive: the
        cap is scaled down with the drive so that reconnects follow the outages as they would
        on the road and the agent drains within its drain time at the end.
        """
        return f"backoff_max_s = {BORDER_UPLINK_BACKOFF_MAX_S}\n"

    def agent_toml(self, workdir: Path, ready: dict[str, Any]) -> str:
        """``[spool]`` and ``[connectivity]`` for the agent, from the simulator's ready line."""
        modem = ready.get("modem")
        if not isinstance(modem, str):
            raise TcuError(f"the simulator's ready line names no modem (started without --modem?): {ready}")
        return (
            "\n# The border scenario: telemetry through the spool; the modem and eSIM roaming loop.\n"
            f'[spool]\ndirectory = {json.dumps(str(workdir / "spool"))}\ndurability = "crash"\n\n'
            "[connectivity]\n"
            f"port = {json.dumps(modem)}\n"
            'modem_profile = "generic"\n'
            f"policy = {json.dumps(str(workdir / 'roaming.toml'))}\n"
            f"audit_log = {json.dumps(str(self.audit_path(workdir)))}\n"
            "poll_interval_s = 0.25\n"
            "command_timeout_s = 5.0\n"
            "card_refresh_s = 10.0\n"
            'clock = "gnss"\n'
            + (
                f"smdp_ca = {json.dumps(str(self.smdpp.ci_certificate))}\n"
                f'smdp_connect = "127.0.0.1:{self.smdpp.port}"\n'
                if self.smdpp is not None
                else ""
            )
        )

    async def summarize(self, ctx: ScenarioContext) -> dict[str, Any]:
        """Check the audit log and the connectivity events the ingest stored."""
        audit_path = self.audit_path(ctx.workdir)
        problems: list[str] = []
        try:
            audit = await asyncio.to_thread(_read_audit, audit_path)
            audit_ok = True
        except (AuditError, OSError, ValueError) as exc:
            audit, audit_ok = _AuditCount(), False
            problems.append(f"audit log {audit_path}: {exc}")
        async with ctx.channel() as channel:
            stored = await query_series(channel, ctx.vehicle_id)
        connectivity = {name: s for name, s in stored.items() if name.startswith(CONNECTIVITY_PREFIX)}
        samples = sum(len(s) for s in connectivity.values())
        events = {name: list(s.strings) for name, s in connectivity.items()}
        stored_switches = events.get(CONNECTIVITY_PREFIX + "ProfileSwitch", [])
        stored_rollbacks = events.get(CONNECTIVITY_PREFIX + "Rollback", [])
        if tuple(audit.switches) != EXPECTED_SWITCHES:
            problems.append(f"switches {audit.switches}, expected {list(EXPECTED_SWITCHES)}")
        if tuple(audit.rollbacks) != EXPECTED_ROLLBACKS:
            problems.append(f"rollbacks {audit.rollbacks}, expected {list(EXPECTED_ROLLBACKS)}")
        if tuple(audit.downloads) != EXPECTED_DOWNLOADS:
            problems.append(f"downloads {audit.downloads}, expected {list(EXPECTED_DOWNLOADS)}")
        if audit.download_failures:
            problems.append(f"failed downloads: {audit.download_failures}")
        if audit.notifications_pending:
            problems.append(f"{audit.notifications_pending} notification(s) left undelivered on the card")
        stored_downloads = events.get(CONNECTIVITY_PREFIX + "ProfileDownload", [])
        if len(stored_downloads) != len(audit.downloads) + len(audit.download_failures):
            problems.append(
                f"ingest stored {len(stored_downloads)} download events, the audit log has "
                f"{len(audit.downloads) + len(audit.download_failures)}"
            )
        if len(stored_switches) != len(audit.switches) or len(stored_rollbacks) != len(audit.rollbacks):
            problems.append(
                f"ingest stored {len(stored_switches)} switch and {len(stored_rollbacks)} rollback events, "
                f"the audit log has {len(audit.switches)} and {len(audit.rollbacks)}"
            )
        link = ctx.done.get("data_link")
        if not isinstance(link, dict):
            link = {}
            problems.append("the simulator reported no data link counters (started without --data-proxy?)")
        elif int(link.get("outages", 0)) < 1:
            problems.append("the cellular data link never went down: the drive tested no outage")
        unacked = int(ctx.agent_final.get("batches_unacked", 0))
        if unacked:
            problems.append(f"the agent stopped with {unacked} batches spooled and not acknowledged")
        for problem in problems:
            ctx.say(f"border scenario: {problem}")
        ctx.say(
            f"data link: {link.get('outages', 0)} outages, {link.get('connections_cut', 0)} connections cut, "
            f"{link.get('refused', 0)} refused, {link.get('connections', 0)} forwarded "
            f"({link.get('bytes_up', 0)} bytes up)"
        )
        ctx.say(
            f"downloads: {audit.downloads} from the SM-DP+, {len(audit.download_failures)} failed; "
            f"notifications: {audit.notifications_delivered} delivered, {audit.notifications_pending} pending"
        )
        ctx.say(
            f"roaming: switched to {audit.switches}, rolled back to {audit.rollbacks}; "
            f"audit log {audit_path} ({audit.entries} entries, chain {'verified' if audit_ok else 'BROKEN'})"
        )
        return {
            "profile_switches": len(audit.switches),
            "rollbacks": len(audit.rollbacks),
            "switched_to": audit.switches,
            "rolled_back_to": audit.rollbacks,
            "profiles_downloaded": len(audit.downloads),
            "downloaded": audit.downloads,
            "download_failures": audit.download_failures,
            "notifications_delivered": audit.notifications_delivered,
            "notifications_pending": audit.notifications_pending,
            "download_events_stored": len(stored_downloads),
            "failed_decisions": audit.failed,
            "audit_log": str(audit_path),
            "audit_entries": audit.entries,
            "audit_verified": audit_ok,
            "es10_calls": audit.es10_calls,
            "connectivity_errors": audit.errors,
            "connectivity_samples": samples,
            "switch_events_stored": len(stored_switches),
            "rollback_events_stored": len(stored_rollbacks),
            "link_outages": int(link.get("outages", 0)),
            "link_connections_cut": int(link.get("connections_cut", 0)),
            "link_refused": int(link.get("refused", 0)),
            "link_connections": int(link.get("connections", 0)),
            "link_bytes_up": int(link.get("bytes_up", 0)),
            "batches_unacked": unacked,
            "scenario_problems": problems,
        }

    def ok(self, extra: dict[str, Any]) -> bool:
        return not extra["scenario_problems"]


register("border", BorderScenario)
