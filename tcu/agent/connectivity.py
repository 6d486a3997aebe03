"""The agent's connectivity source: modem state, GNSS and the eSIM roaming loop as telemetry.

Configured by the agent's ``[connectivity]`` table (paths relative to the agent config)::

    [connectivity]
    port = "/dev/ttyUSB2"            # the modem's AT port (required)
    modem_profile = "generic"        # quirks preset, see tcu.modem.PRESETS
    policy = "roaming.toml"          # roaming rules, see tcu.esim.policy (required)
    audit_log = "esim-audit.jsonl"   # hash-chained audit log (required)
    poll_interval_s = 2.0            # one registration/signal poll and policy step per interval
    command_timeout_s = 5.0          # AT command timeout (default: the modem profile's)
    apdu_timeout_s = 10.0            # timeout of one APDU through AT+CGLA (default: the profile's)
    card_refresh_s = 60.0            # re-read the card's profiles at least this often
    clock = "gnss"                   # "gnss": policy time from the NMEA fixes; "wall": time.time_ns()
    reopen_after_errors = 5          # consecutive failed polls before the AT port is reopened

Every ``poll_interval_s`` the source reads registration (``AT+CEREG?``/``AT+COPS?``) and
signal (``AT+CSQ``/``AT+CESQ``), builds an :class:`~tcu.esim.Observation` (enabled profile,
registration, MCC, last GNSS position), steps the :class:`~tcu.esim.RoamingPolicy` and has
the :class:`~tcu.esim.ProfileManager` execute its decision (the manager writes every
decision, ES10 call and outcome to the audit log; this source adds ``error`` entries).

**Clock.** With ``clock = "gnss"`` the policy's time is the UTC time of the last ``$xxRMC``
fix plus the monotonic time elapsed since it arrived; before the first fix it is the wall
clock. Dwell times and attach deadlines are then in GNSS (for the simulator: simulated)
seconds, also when a simulated drive runs faster than real time. The clock never runs
backwards. Signals are stamped with the same clock, so they line up with CAN samples that
carry simulated source time.

**Signals** (emitted on change; events on each occurrence)::

    Vehicle.Connectivity.Iccid               string  enabled profile ("" when none)
    Vehicle.Connectivity.Plmn                string  serving "MCC-MNC" ("" when not registered)
    Vehicle.Connectivity.AccessTechnology    string  e.g. "eutran" ("" when unknown)
    Vehicle.Connectivity.RegistrationStatus  string  home, roaming, searching, denied, ...
    Vehicle.Connectivity.SignalStrength      double  dBm (LTE RSRP, else RSSI)
    Vehicle.Connectivity.IsRoaming           double  0 or 1
    Vehicle.Connectivity.ProfileSwitch       string  event: "switch enable <iccid> (<label>) reason=..."
    Vehicle.Connectivity.Rollback            string  event: "rollback enable <iccid> (<label>) reason=..."
    Vehicle.Connectivity.SwitchError         string  event: a decision the card did not carry out

**Orders** (the signed command ``esim.enable``, see :mod:`tcu.agent.commands`):
:meth:`ConnectivitySource.order` queues the order for the source's own loop (at most one
pending order: another one is refused with ``busy`` until the first one's outcome is
known). The next poll carries it out instead of a policy step, like a policy decision:
:meth:`~tcu.esim.RoamingPolicy.record_order` gives an ``order`` decision (audited with the
command id and the backend's reason), the manager enables the profile (outcome audited)
and a ``ProfileSwitch`` event ``"order enable <iccid> (<label>) reason=ordered by backend
(command <id>)[: <reason>]"`` is emitted. The policy then supervises the attach as for its
own switches (rollback after ``attach_deadline_s``) and holds the ordered profile
(``order_hold_s``, :mod:`tcu.esim.policy`). ``order`` returns (or raises
:class:`~tcu.agent.commands.CommandRefused` with ``failed`` or ``rolled_back``) once the
outcome is known. An order waits while the AT port is being reopened.

**Errors** of the modem or the card never end the source: they are logged, written to the
audit log, the card state is re-read on the next poll, and after ``reopen_after_errors``
failed polls in a row the AT port is closed and opened again. Only cancellation (agent
shutdown) ends :meth:`ConnectivitySource.run`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcu.agent.commands import CommandRefused, DownloadOrder, EsimOrder, parse_esim_order
from tcu.agent.sources import Emitter
from tcu.config import AgentConfig, ConnectivityConfig
from tcu.config import parse_connectivity as parse_config
from tcu.errors import ConfigError, TcuError
from tcu.esim import (
    AuditLog,
    Decision,
    DecisionKind,
    Observation,
    PolicyConfig,
    ProfileManager,
    RoamingPolicy,
)
from tcu.esim import load_policy as load_roaming_policy
from tcu.esim.es9 import Es9Config, parse_activation_code
from tcu.esim.lpa import DownloadError, DownloadResult, Lpa
from tcu.modem import AtApduTransport, AtChannel, AtConfig, Modem, ModemProfile, modem_profile
from tcu.modem.clock import GnssClock, fix_time_ns
from tcu.modem.device import Registration
from tcu.modem.parse import SignalQuality
from tcu.signals.mapping import ExtraSignal

__all__ = [
    "SIGNALS",
    "ConnectivityConfig",
    "ConnectivitySource",
    "EsimOrder",
    "GnssClock",
    "build_connectivity_source",
    "fix_time_ns",
    "parse_connectivity",
    "parse_esim_order",
]

log = logging.getLogger(__name__)

_P = "Vehicle.Connectivity."
_NOTIFY_RETRY_S = 60.0  # wall seconds between delivery rounds while notifications stay undelivered

SIGNALS: tuple[ExtraSignal, ...] = (
    ExtraSignal(_P + "Iccid", "", "string", "esim"),
    ExtraSignal(_P + "Plmn", "", "string", "modem"),
    ExtraSignal(_P + "AccessTechnology", "", "string", "modem"),
    ExtraSignal(_P + "RegistrationStatus", "", "string", "modem"),
    ExtraSignal(_P + "SignalStrength", "dBm", "double", "modem"),
    ExtraSignal(_P + "IsRoaming", "", "double", "modem"),
    ExtraSignal(_P + "ProfileSwitch", "", "string", "esim"),
    ExtraSignal(_P + "Rollback", "", "string", "esim"),
    ExtraSignal(_P + "SwitchError", "", "string", "esim"),
    ExtraSignal(_P + "ProfileDownload", "", "string", "esim"),
)
"""The signals this source declares (they join the agent's catalog)."""


def parse_connectivity(
    table: Mapping[str, Any], *, base: Path, source: str | None = None
) -> ConnectivityConfig:
    """:func:`tcu.config.parse_connectivity`, and the modem profile it names must exist.

    :class:`ConfigError` names ``connectivity.<key>`` (and ``source``, the file).
    """
    return _check_modem_profile(parse_config(table, base=base, source=source), source)


def _check_modem_profile(config: ConnectivityConfig, source: str | None) -> ConnectivityConfig:
    try:
        modem_profile(config.modem_profile)
    except ConfigError as exc:
        raise ConfigError(str(exc), key="connectivity.modem_profile", path=source) from exc
    return config


@dataclass(eq=False, slots=True)
class _QueuedOrder:
    order: EsimOrder | DownloadOrder
    command_id: str
    done: asyncio.Future[str]
    decision: Decision | None = None


def build_connectivity_source(config: AgentConfig) -> ConnectivitySource:
    """The agent's hook: the modem profile ``config.connectivity`` names, and the roaming policy it loads."""
    if config.connectivity is None:
        raise ConfigError("no [connectivity] table", key="connectivity")
    source = str(config.source) if config.source is not None else None
    checked = _check_modem_profile(config.connectivity, source)
    return ConnectivitySource(checked, load_roaming_policy(checked.policy))


def _plmn(reg: Registration) -> str:
    return f"{reg.mcc}-{reg.mnc}" if reg.registered and reg.mcc and reg.mnc else ""


def _dbm(signal: SignalQuality) -> float | None:
    value = signal.rsrp_dbm if signal.rsrp_dbm is not None else signal.rssi_dbm
    return None if value is None else float(value)


class ConnectivitySource:
    """A :class:`~tcu.agent.sources.SignalSource`: the modem, GNSS and the roaming loop."""

    name = "connectivity"
    signals: Sequence[ExtraSignal] = SIGNALS

    def __init__(self, config: ConnectivityConfig, policy: PolicyConfig) -> None:
        self.config = config
        self.policy_config = policy
        self.policy = RoamingPolicy(policy)
        self.clock = GnssClock(use_gnss=config.clock == "gnss")
        self.position: tuple[float, float] | None = None
        self.decisions: list[tuple[Decision, bool]] = []
        """Every executed decision with whether the card carried it out (for tests and stats)."""
        self.errors = 0
        self.reopens = 0
        self.downloads: list[DownloadResult] = []
        """Every profile this source downloaded (policy or order), in order."""
        self.download_failures = 0
        self._installed: frozenset[str] | None = None
        self._lpa: Lpa | None = None
        self._notify_due = True
        """Deliver the card's pending notifications at the next registered poll (with an LPA)."""
        self._notify_after_mono = 0.0
        self._audit: AuditLog | None = None
        self._enabled: str | None = None
        self._card_read_mono: float | None = None
        self._last: dict[str, float | str] = {}
        self._order: _QueuedOrder | None = None
        self._last_error: str | None = None

    @property
    def state(self) -> dict[str, float | str]:
        """The latest ``Vehicle.Connectivity.*`` values, by name without the prefix (``Iccid``, ...)."""
        return {name.removeprefix(_P): value for name, value in self._last.items()}

    # --- orders ---------------------------------------------------------------------------

    @property
    def pending_order(self) -> str | None:
        """The command id of the order queued or awaiting its outcome, if any."""
        return self._order.command_id if self._order is not None else None

    def _order_label(self, order: EsimOrder | DownloadOrder) -> str:
        if isinstance(order, DownloadOrder):
            return f"download {order.activation_code}"
        return self.policy_config.label(order.iccid)

    async def order(self, order: EsimOrder | DownloadOrder, *, command_id: str) -> str:
        """Have the loop enable ``order.iccid`` (module docstring); returns a note on success.

        A :class:`DownloadOrder` first downloads the profile (``failed`` if that fails), then
        enables the profile the card installed, as an ``esim.enable`` order would.

        Raises :class:`CommandRefused`: ``busy`` (an order is pending), ``failed`` (the card
        did not enable it), ``rolled_back`` (no registration within the attach deadline).
        """
        if self._order is not None:
            queued = self._order
            raise CommandRefused(
                "busy",
                f"order {queued.command_id} for {self._order_label(queued.order)} is still "
                "pending; send again when it is answered",
            )
        queued = _QueuedOrder(order, command_id, asyncio.get_running_loop().create_future())
        # Retrieve the outcome also when the caller went away (agent shutdown): no asyncio warning.
        queued.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._order = queued
        log.info("connectivity: order %s queued: %s", command_id, self._order_label(order))
        try:
            return await asyncio.shield(queued.done)
        finally:
            if self._order is queued and (queued.done.done() or queued.decision is None):
                self._order = None  # answered, or the caller went away before the loop took it

    def _finish_order(self, result: str | CommandRefused) -> None:
        queued, self._order = self._order, None
        if queued is None or queued.done.done():
            return
        if isinstance(result, CommandRefused):
            log.warning("connectivity: order %s: %s", queued.command_id, result)
            queued.done.set_exception(result)
        else:
            log.info("connectivity: order %s: %s", queued.command_id, result)
            queued.done.set_result(result)

    def _order_decision(self, queued: _QueuedOrder, t_ns: int) -> Decision:
        assert isinstance(queued.order, EsimOrder)
        reason = f"ordered by backend (command {queued.command_id})"
        if queued.order.reason:
            reason += f": {queued.order.reason}"
        decision = self.policy.record_order(
            queued.order.iccid, t_ns, enabled=self._enabled, command_id=queued.command_id, reason=reason
        )
        queued.decision = decision
        return decision

    def _follow_order(
        self, reg: Registration, observed: str | None, decision: Decision | None, ok: bool
    ) -> None:
        """After a poll: answer the executed order once its outcome is known.

        ``reg`` and ``observed`` (the enabled profile) are what the policy stepped on,
        ``decision`` what it decided then (carried out: ``ok``).
        """
        queued = self._order
        if queued is None or queued.decision is None or not isinstance(queued.order, EsimOrder):
            return
        target = queued.order.iccid
        label = f"{target} ({self.policy_config.label(target)})"
        if decision is queued.decision and not ok:
            self._finish_order(CommandRefused("failed", f"enable {label}: {self._last_error}"))
            return
        if self.policy.pending_target == target:
            return  # waiting for registration on it
        if reg.registered and observed == target:
            self._finish_order(f"enabled {label}, registered on {_plmn(reg) or 'the network'}")
        elif decision is not None and decision.kind is DecisionKind.rollback:
            back = decision.reason if ok else f"{decision.reason}; the rollback failed: {self._last_error}"
            self._finish_order(CommandRefused("rolled_back", back))
        else:
            now = self._enabled or "none"
            self._finish_order(
                CommandRefused(
                    "failed",
                    f"no registration on {label} within {self.policy_config.attach_deadline_s:g} s "
                    f"({now} enabled now)",
                )
            )

    # --- life cycle -----------------------------------------------------------------------

    async def run(self, emit: Emitter) -> None:
        """Poll and steer until cancelled; reopens the AT port after repeated failures."""
        try:
            self._audit = await asyncio.to_thread(AuditLog, self.config.audit_log)
        except TcuError as exc:  # keep the telemetry flowing; say loudly that nothing is audited
            log.error("connectivity: audit log unusable, decisions are NOT audited: %s", exc)
        profile = modem_profile(self.config.modem_profile)
        profile = dataclasses.replace(
            profile,
            command_timeout_s=self.config.command_timeout_s or profile.command_timeout_s,
            apdu_timeout_s=self.config.apdu_timeout_s or profile.apdu_timeout_s,
        )
        while True:
            try:
                async with AtChannel(
                    AtConfig(port=self.config.port, command_timeout_s=profile.command_timeout_s)
                ) as channel:
                    await self._session(channel, profile, emit)
            except (TcuError, OSError) as exc:
                await self._error("AT port", exc)
            except Exception as exc:  # a bug here must not stop the telemetry beside it
                log.exception("connectivity: unexpected error; reopening %s", self.config.port)
                await self._error("unexpected", exc)
            self._card_read_mono = None
            await asyncio.sleep(self.config.reopen_backoff_s)

    async def _session(self, channel: AtChannel, profile: ModemProfile, emit: Emitter) -> None:
        modem = Modem(channel, profile)
        manager = ProfileManager(
            AtApduTransport(channel, profile),
            audit=self._audit,
            refresh=profile.refresh_flag,
            after_switch=modem.after_profile_switch,
        )
        self._lpa = None
        if self.config.smdp_ca is not None:
            es9 = Es9Config(
                ca_file=self.config.smdp_ca,
                connect_to=self.config.smdp_connect,
                timeout_s=self.config.es9_timeout_s,
            )
            self._lpa = Lpa(AtApduTransport(channel, profile), es9, audit=self._audit)
        gnss = asyncio.create_task(self._follow_gnss(modem), name="tcu.agent.connectivity.gnss")
        failures = 0
        try:
            while True:
                try:
                    await self.poll(modem, manager, emit)
                    failures = 0
                except (TcuError, OSError) as exc:
                    failures += 1
                    self._card_read_mono = None  # re-read the card on the next poll
                    await self._error("poll", exc)
                    if failures >= self.config.reopen_after_errors:
                        log.warning("%d failed polls in a row: reopening %s", failures, self.config.port)
                        self.reopens += 1
                        return
                await asyncio.sleep(self.config.poll_interval_s)
        finally:
            gnss.cancel()
            await asyncio.gather(gnss, return_exceptions=True)

    async def _follow_gnss(self, modem: Modem) -> None:
        async for fix in modem.gnss_fixes():
            if not fix.valid:
                continue
            if fix.sentence == "RMC":
                self.clock.on_fix(fix)
            if fix.lat_deg is not None and fix.lon_deg is not None:
                self.position = (fix.lat_deg, fix.lon_deg)

    async def _error(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        log.warning("connectivity: %s failed: %s", where, exc)
        if self._audit is None:
            return
        try:
            await self._audit.aappend("error", {"where": where, "error": f"{type(exc).__name__}: {exc}"})
        except TcuError as audit_exc:
            log.error("connectivity: cannot write the audit log: %s", audit_exc)

    # --- one step -------------------------------------------------------------------------

    async def poll(self, modem: Modem, manager: ProfileManager, emit: Emitter) -> Decision | None:
        """Read the modem (and the card when due), step the policy, execute its decision."""
        reg = await modem.registration()
        signal = await modem.signal()
        now = time.monotonic()
        if self._card_read_mono is None or now - self._card_read_mono >= self.config.card_refresh_s:
            profiles, enabled = await manager.state()
            self._enabled = enabled.iccid if enabled is not None else None
            self._installed = frozenset(p.iccid for p in profiles if p.iccid is not None)
            self._card_read_mono = now
        t_ns = self.clock.now_ns()
        self._emit_state(emit, t_ns, reg, signal)
        queued = self._order
        ordered_download = (
            queued is not None and queued.decision is None and isinstance(queued.order, DownloadOrder)
        )
        if ordered_download and queued is not None and not await self._download_ordered(queued, emit, t_ns):
            return None
        decision: Decision | None
        if queued is not None and queued.decision is None:
            decision = self._order_decision(queued, t_ns)
        else:
            decision = self.policy.step(
                Observation(t_ns, self._enabled, reg.registered, reg.mcc, self.position, self._installed)
            )
        observed, ok = self._enabled, True
        if decision is not None:
            ok = await self._carry_out(decision, manager, emit, t_ns)
            self._notify_due = self._notify_due or decision.kind is not DecisionKind.hold
        elif (
            self._notify_due
            and reg.registered
            and self._lpa is not None
            and self.policy.pending_target is None
            and now >= self._notify_after_mono
        ):
            # the link allows: hand the card's notifications to their SM-DP+ (removed once delivered)
            self._notify_due = False
            report = await self._lpa.deliver_notifications()
            if report.pending:
                self._notify_due, self._notify_after_mono = True, time.monotonic() + _NOTIFY_RETRY_S
                log.warning(
                    "connectivity: notifications %s not delivered; again in %.0f s",
                    report.pending,
                    _NOTIFY_RETRY_S,
                )
        self._follow_order(reg, observed, decision, ok)
        return decision

    async def _download(self, code: str, emit: Emitter, t_ns: int, why: str) -> DownloadResult:
        """Download the profile ``code`` names (audited by the LPA); emits ``ProfileDownload``."""
        if self._lpa is None:
            self.download_failures += 1
            text = f"download {code} ({why}) impossible: no [connectivity] smdp_ca configured"
            emit.emit(_P + "ProfileDownload", f"failed: {text}", t_ns=t_ns)
            raise DownloadError("start", text, cancelled="nothing started", transaction_id=None)
        try:
            result = await self._lpa.download(parse_activation_code(code))
        except DownloadError as exc:
            self.download_failures += 1
            emit.emit(_P + "ProfileDownload", f"failed {code} ({why}): {exc}", t_ns=t_ns)
            raise
        self.downloads.append(result)
        self._installed = (self._installed or frozenset()) | {result.iccid}
        pending = (
            f", {len(result.notifications.pending)} notification(s) pending"
            if result.notifications.pending
            else ""
        )
        emit.emit(
            _P + "ProfileDownload",
            f"installed {result.iccid} from {result.smdp_address} ({why}){pending}",
            t_ns=t_ns,
        )
        return result

    async def _download_ordered(self, queued: _QueuedOrder, emit: Emitter, t_ns: int) -> bool:
        """Download what an ``esim.download`` order names; it becomes an enable order of that profile."""
        order = queued.order
        assert isinstance(order, DownloadOrder)
        try:
            result = await self._download(order.activation_code, emit, t_ns, f"order {queued.command_id}")
        except (DownloadError, TcuError) as exc:
            self._finish_order(CommandRefused("failed", str(exc)))
            return False
        queued.order = EsimOrder(result.iccid, order.reason)
        return True

    async def _carry_out(self, decision: Decision, manager: ProfileManager, emit: Emitter, t_ns: int) -> bool:
        log.info("roaming decision: %s %s: %s", decision.kind.value, decision.target_iccid, decision.reason)
        prepare = None
        if decision.kind is DecisionKind.download and decision.activation_code is not None:
            code, target = decision.activation_code, decision.target_iccid

            async def prepare() -> None:
                result = await self._download(code, emit, t_ns, "policy")
                if result.iccid != target:
                    raise DownloadError(
                        "check",
                        f"the activation code installed {result.iccid}, the policy expected {target}",
                        cancelled="the profile stays installed, disabled",
                        transaction_id=result.transaction_id,
                    )

        outcome = await manager.execute(decision, prepare=prepare)
        self.policy.record_outcome(decision, outcome.ok, t_ns=self.clock.now_ns())
        self.decisions.append((decision, outcome.ok))
        self._last_error = outcome.error
        if decision.kind is DecisionKind.hold:
            return outcome.ok
        if outcome.ok and outcome.enabled_iccid is not None:
            self._enabled = outcome.enabled_iccid
            self._card_read_mono = time.monotonic()
        else:
            self._card_read_mono = None
        self._emit_decision(emit, t_ns, decision, outcome.ok, outcome.error)
        self._change(emit, t_ns, _P + "Iccid", self._enabled or "")
        return outcome.ok

    def _change(self, emit: Emitter, t_ns: int, name: str, value: float | str) -> None:
        if self._last.get(name) != value:
            self._last[name] = value
            emit.emit(name, value, t_ns=t_ns)

    def _emit_state(self, emit: Emitter, t_ns: int, reg: Registration, signal: SignalQuality) -> None:
        self._change(emit, t_ns, _P + "Iccid", self._enabled or "")
        self._change(emit, t_ns, _P + "Plmn", _plmn(reg))
        self._change(emit, t_ns, _P + "AccessTechnology", reg.act.name if reg.act is not None else "")
        self._change(emit, t_ns, _P + "RegistrationStatus", reg.status.name)
        self._change(emit, t_ns, _P + "IsRoaming", 1.0 if reg.roaming else 0.0)
        dbm = _dbm(signal)
        if dbm is not None:
            self._change(emit, t_ns, _P + "SignalStrength", dbm)

    def _emit_decision(
        self, emit: Emitter, t_ns: int, decision: Decision, ok: bool, error: str | None
    ) -> None:
        target = decision.target_iccid or ""
        text = (
            f"{decision.kind.value} enable {target} ({self.policy_config.label(target)}) "
            f"reason={decision.reason}"
        )
        if not ok:
            emit.emit(_P + "SwitchError", f"{text}: {error}", t_ns=t_ns)
        elif decision.kind is DecisionKind.rollback:
            emit.emit(_P + "Rollback", text, t_ns=t_ns)
        else:
            emit.emit(_P + "ProfileSwitch", text, t_ns=t_ns)
