"""eSIM: ES10 codec, ISD-R session, profile manager, roaming policy and hash-chained audit log.

Layers (``tcu.esim`` never imports ``tcu.modem``; the transport is a protocol)::

    es10 / der        typed ES10 messages (SGP.22 v2.2.2) and a strict DER TLV codec
    session           IsdrSession over any ApduTransport (async): STORE DATA, GET RESPONSE, SWs
    manager           ProfileManager: audited operations, re-reads the card around changes
    policy            RoamingPolicy (pure) + TOML rules (load_policy / parse_policy)
    audit             AuditLog (append-only JSON lines, SHA-256 chain) and verify(path)

Wiring on a vehicle (what ``tcu esim`` does; the agent does the same)::

    at = AtChannel(AtConfig(port="/dev/ttyUSB2")); await at.open()
    profile = modem_profile("generic"); modem = Modem(at, profile)
    manager = ProfileManager(AtApduTransport(at, profile), audit=AuditLog(path),
                             refresh=profile.refresh_flag, after_switch=modem.after_profile_switch)
    policy = RoamingPolicy(load_policy("roaming.toml"))
    every few seconds:
        reg = await modem.registration(); enabled = await manager.enabled()
        decision = policy.step(Observation(time.time_ns(), enabled.iccid if enabled else None,
                                           reg.registered, reg.mcc, position))
        if decision: policy.record_outcome(decision, (await manager.execute(decision)).ok)

In tests the transport is ``sim.euicc.EuiccTransport(SimulatedEuicc(...))`` or the AT
transport against ``sim.modem.SimulatedModem`` on a pty.
"""

from tcu.esim.audit import AuditError, AuditLog, verify
from tcu.esim.es10 import (
    EnableResult,
    Es10Error,
    NotificationEvent,
    NotificationMetadata,
    ProfileClass,
    ProfileInfo,
    ProfileRef,
    ProfileState,
    iccid_from_bcd,
    iccid_to_bcd,
)
from tcu.esim.manager import CardStateError, ProfileManager, SwitchOutcome
from tcu.esim.policy import (
    CountryRule,
    Decision,
    DecisionKind,
    Observation,
    PolicyConfig,
    RoamingPolicy,
    load_policy,
    parse_policy,
)
from tcu.esim.session import (
    ECASD_AID,
    ISDR_AID,
    ApduStatusError,
    ApduTransport,
    ApduTransportError,
    Es10ResultError,
    IsdrSession,
)

__all__ = [
    "ECASD_AID",
    "ISDR_AID",
    "ApduStatusError",
    "ApduTransport",
    "ApduTransportError",
    "AuditError",
    "AuditLog",
    "CardStateError",
    "CountryRule",
    "Decision",
    "DecisionKind",
    "EnableResult",
    "Es10Error",
    "Es10ResultError",
    "IsdrSession",
    "NotificationEvent",
    "NotificationMetadata",
    "Observation",
    "PolicyConfig",
    "ProfileClass",
    "ProfileInfo",
    "ProfileManager",
    "ProfileRef",
    "ProfileState",
    "RoamingPolicy",
    "SwitchOutcome",
    "iccid_from_bcd",
    "iccid_to_bcd",
    "load_policy",
    "parse_policy",
    "verify",
]
