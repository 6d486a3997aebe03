"""Roaming policy: declarative TOML rules and a pure decision engine.

The engine does no I/O and reads no clock: :meth:`RoamingPolicy.step` takes an
:class:`Observation` (time, enabled profile, registration, serving MCC, GNSS position)
and returns at most one :class:`Decision`; :meth:`RoamingPolicy.record_outcome` tells it
whether an executed decision worked. The same inputs always give the same decisions.

Rules, in order of priority:

1. **Attach deadline / rollback.** After a switch the engine waits ``attach_deadline_s``
   for registration on the new profile; if it does not come, it rolls back to the
   previous profile and does not try that profile in that country again for
   ``retry_after_s`` (SGP.22 has no rollback primitive: the TCU re-enables the old one).
2. **Fallback.** Without registration for ``fallback_after_s`` the engine switches to the
   ``fallback`` profile (e.g. the multi-IMSI bootstrap profile).
3. **Country rules.** The country comes from the serving MCC while registered, and from
   the GNSS position (per-country ``bbox``) while not. A new country counts only after
   hysteresis: ``min_dwell_s`` in it **and** ``min_border_distance_m`` travelled from where
   it was first seen (distance is skipped without positions). In a country:

   * ``allow_roaming``: profiles allowed to roam there; any other enabled profile is
     switched to ``preferred`` (or the first allowed) at once;
   * ``preferred`` with ``max_roaming_days`` (permanent-roaming limit, default 0):
     after that long in the country on another profile, switch to ``preferred``.
     Without ``preferred`` the current profile keeps roaming.

   * ``download``: an activation code for ``preferred``. When the card is known not to hold the
     preferred profile (:attr:`Observation.installed`), the engine asks for it to be downloaded
     (a ``download`` decision: the agent's LPA fetches it from the SM-DP+ and enables it) instead
     of switching to a profile that is not there. The attach is supervised as for a switch
     (rollback to the profile enabled before). A failed download is tried again after
     ``download_retry_s``, at most ``download_attempts`` times per country and profile; then the
     engine gives up with one ``hold`` decision saying so (audited like every decision).

4. **Cap.** At most ``max_switches_per_hour`` policy switches in any 60 minutes; a
   switch over the cap becomes a ``hold`` decision (emitted once per reason). Rollbacks,
   fallbacks and orders are never held; they count towards the cap.

**Orders.** A backend may order a profile (the signed command ``esim.enable``): the
agent calls :meth:`RoamingPolicy.record_order` instead of :meth:`~RoamingPolicy.step`
and executes the ``order`` decision it returns. The order is supervised like a switch:
without registration on the ordered profile within ``attach_deadline_s`` the engine
rolls back to the profile enabled before the order (rule 1). Once it attached, the
order *holds*: the country rules (3) do not switch away from the ordered profile while
the vehicle stays in the country it was ordered in (a new country counts after the
usual hysteresis), for at most ``order_hold_s`` (default 86400 s, one day; 0: no time
limit, only a country change ends the hold). The fallback rule (2) still applies, and
so does anything that changes the enabled profile (the hold then ends). An order
overrides ``retry_after_s`` and the cap; a policy switch waiting for its attach is
replaced by the order. An order that fails (card refusal, rollback) ends no earlier
hold: the order held before it holds again while its profile is enabled.

Example (``roaming.toml``)::

    [policy]
    min_dwell_s = 300
    min_border_distance_m = 2000
    attach_deadline_s = 120
    fallback_after_s = 600
    max_switches_per_hour = 4
    order_hold_s = 86400                   # an ordered profile holds in its country for a day
    download_attempts = 3                  # downloads of a missing preferred profile, per country
    download_retry_s = 600                 # wait after a failed download
    fallback = "bootstrap"

    [profiles]
    bootstrap = "8988211000000000001"
    home-de = "89490200001234567890"
    local-at = "89430100001234567891"

    [countries.DE]
    preferred = "home-de"
    bbox = [47.27, 5.87, 55.06, 15.04]    # lat_min, lon_min, lat_max, lon_max

    [countries.AT]
    preferred = "local-at"
    max_roaming_days = 0                   # localize as soon as the country is confirmed
    allow_roaming = ["home-de", "bootstrap"]
    bbox = [46.37, 9.53, 49.02, 17.16]
    download = "LPA:1$smdp.operator-at.example$AT-FLEET-0001"   # if the card lacks local-at
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcu.errors import ConfigError
from tcu.tomlutil import parse_toml

__all__ = [
    "MCC_COUNTRIES",
    "CountryRule",
    "Decision",
    "DecisionKind",
    "Observation",
    "PolicyConfig",
    "RoamingPolicy",
    "load_policy",
    "parse_policy",
]

#: MCC → ISO 3166 alpha-2 (ITU-T E.212), a working subset; extend with ``[mcc]`` in TOML.
MCC_COUNTRIES: dict[str, str] = {
    "202": "GR", "204": "NL", "206": "BE", "208": "FR", "212": "MC", "214": "ES", "216": "HU",
    "218": "BA", "219": "HR", "220": "RS", "222": "IT", "226": "RO", "228": "CH", "230": "CZ",
    "231": "SK", "232": "AT", "234": "GB", "235": "GB", "238": "DK", "240": "SE", "242": "NO",
    "244": "FI", "246": "LT", "247": "LV", "248": "EE", "250": "RU", "255": "UA", "260": "PL",
    "262": "DE", "268": "PT", "270": "LU", "272": "IE", "286": "TR", "293": "SI", "295": "LI",
    "302": "CA", "310": "US", "311": "US", "312": "US", "313": "US", "314": "US", "315": "US",
    "316": "US", "334": "MX", "404": "IN", "405": "IN", "420": "SA", "424": "AE", "440": "JP",
    "441": "JP", "450": "KR", "460": "CN", "505": "AU", "621": "NG", "655": "ZA", "724": "BR",
}  # fmt: skip


class DecisionKind(enum.Enum):
    switch = "switch"
    rollback = "rollback"
    fallback = "fallback"
    hold = "hold"
    order = "order"
    download = "download"


@dataclass(frozen=True, slots=True)
class Decision:
    kind: DecisionKind
    target_iccid: str | None
    reason: str
    t_ns: int
    country: str | None = None
    previous_iccid: str | None = None
    command_id: str | None = None
    """For an ``order``: the id of the backend's command."""
    activation_code: str | None = None
    """For a ``download``: the activation code of the profile to fetch (then enable)."""

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "decision": self.kind.value,
            "target": self.target_iccid,
            "previous": self.previous_iccid,
            "reason": self.reason,
            "country": self.country,
            "decision_t_ns": self.t_ns,
        }
        if self.command_id is not None:
            fields["command_id"] = self.command_id
        if self.activation_code is not None:
            fields["activation_code"] = self.activation_code
        return fields


@dataclass(frozen=True, slots=True)
class Observation:
    t_ns: int
    enabled_iccid: str | None
    registered: bool
    mcc: str | None = None
    position: tuple[float, float] | None = None
    installed: frozenset[str] | None = None
    """The ICCIDs on the card (``None``: not known; then no download is asked for)."""


@dataclass(frozen=True, slots=True)
class CountryRule:
    country: str
    preferred: str | None = None
    allow_roaming: tuple[str, ...] | None = None
    max_roaming_s: float = 0.0
    bbox: tuple[float, float, float, float] | None = None
    download: str | None = None
    """Activation code of ``preferred``, fetched when the card does not hold it."""

    def contains(self, position: tuple[float, float]) -> bool:
        if self.bbox is None:
            return False
        lat_min, lon_min, lat_max, lon_max = self.bbox
        return lat_min <= position[0] <= lat_max and lon_min <= position[1] <= lon_max


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    profiles: Mapping[str, str] = field(default_factory=dict)
    countries: Mapping[str, CountryRule] = field(default_factory=dict)
    fallback_iccid: str | None = None
    min_dwell_s: float = 300.0
    min_border_distance_m: float = 2000.0
    attach_deadline_s: float = 120.0
    fallback_after_s: float = 600.0
    max_switches_per_hour: int = 4
    retry_after_s: float = 3600.0
    order_hold_s: float = 86400.0
    download_attempts: int = 3
    download_retry_s: float = 600.0
    mcc_countries: Mapping[str, str] = field(default_factory=lambda: dict(MCC_COUNTRIES))

    def label(self, iccid: str | None) -> str:
        for name, value in self.profiles.items():
            if value == iccid:
                return name
        return iccid or "none"


# --- TOML ----------------------------------------------------------------------------------

_POLICY_KEYS = {
    "min_dwell_s": float,
    "min_border_distance_m": float,
    "attach_deadline_s": float,
    "fallback_after_s": float,
    "max_switches_per_hour": int,
    "retry_after_s": float,
    "order_hold_s": float,
    "download_attempts": int,
    "download_retry_s": float,
}


def _resolve(ref: object, profiles: Mapping[str, str], key: str, source: str) -> str:
    if not isinstance(ref, str):
        raise ConfigError(f"expected a profile label or ICCID, got {ref!r}", key=key, path=source)
    if ref in profiles:
        return profiles[ref]
    if ref.isdigit() and 18 <= len(ref) <= 20:
        return ref
    raise ConfigError(
        f"unknown profile {ref!r} (labels: {', '.join(sorted(profiles))})", key=key, path=source
    )


def parse_policy(text: str, *, source: str = "<string>") -> PolicyConfig:
    """Parse roaming rules from TOML text; :class:`ConfigError` names the key."""
    data = parse_toml(text, lambda detail, _line: ConfigError(f"invalid TOML: {detail}", path=source))
    unknown = set(data) - {"policy", "profiles", "countries", "mcc"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}", path=source)
    profiles: dict[str, str] = {}
    for label, iccid in data.get("profiles", {}).items():
        if not isinstance(iccid, str) or not iccid.isdigit() or not 18 <= len(iccid) <= 20:
            raise ConfigError(f"ICCID {iccid!r} must be 18-20 digits", key=f"profiles.{label}", path=source)
        profiles[label] = iccid
    settings: dict[str, Any] = {}
    policy = data.get("policy", {})
    for key, value in policy.items():
        if key == "fallback":
            settings["fallback_iccid"] = _resolve(value, profiles, "policy.fallback", source)
        elif key in _POLICY_KEYS:
            kind = _POLICY_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    f"must be a non-negative number, got {value!r}", key=f"policy.{key}", path=source
                )
            if kind is int and not isinstance(value, int):
                raise ConfigError(f"must be an integer, got {value!r}", key=f"policy.{key}", path=source)
            settings[key] = kind(value)
        else:
            raise ConfigError("unknown key", key=f"policy.{key}", path=source)
    countries: dict[str, CountryRule] = {}
    for code, rule in data.get("countries", {}).items():
        prefix = f"countries.{code}"
        if not isinstance(rule, dict):
            raise ConfigError("must be a table", key=prefix, path=source)
        extra = set(rule) - {"preferred", "allow_roaming", "max_roaming_days", "bbox", "download"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(extra)}", key=prefix, path=source)
        preferred = (
            _resolve(rule["preferred"], profiles, f"{prefix}.preferred", source)
            if "preferred" in rule
            else None
        )
        allow = None
        if "allow_roaming" in rule:
            if not isinstance(rule["allow_roaming"], list):
                raise ConfigError("must be a list", key=f"{prefix}.allow_roaming", path=source)
            allow = tuple(
                _resolve(r, profiles, f"{prefix}.allow_roaming", source) for r in rule["allow_roaming"]
            )
        days = rule.get("max_roaming_days", 0)
        if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
            raise ConfigError(
                f"must be a non-negative number, got {days!r}", key=f"{prefix}.max_roaming_days", path=source
            )
        bbox = None
        if "bbox" in rule:
            box = rule["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
                raise ConfigError(
                    "must be [lat_min, lon_min, lat_max, lon_max]", key=f"{prefix}.bbox", path=source
                )
            bbox = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        download = rule.get("download")
        if download is not None:
            if preferred is None:
                raise ConfigError(
                    "needs preferred (the profile it downloads)", key=f"{prefix}.download", path=source
                )
            if (
                not isinstance(download, str)
                or not download.upper().startswith("LPA:1$")
                or download.count("$") < 2
            ):
                raise ConfigError(
                    f"must be an activation code LPA:1$<SM-DP+>$<matching id>, got {download!r}",
                    key=f"{prefix}.download",
                    path=source,
                )
        countries[code] = CountryRule(code, preferred, allow, float(days) * 86400.0, bbox, download)
    mcc = dict(MCC_COUNTRIES)
    for code, country in data.get("mcc", {}).items():
        if not (isinstance(code, str) and len(code) == 3 and code.isdigit() and isinstance(country, str)):
            raise ConfigError(
                f'expected "MCC" = "CC", got {code!r} = {country!r}', key=f"mcc.{code}", path=source
            )
        mcc[code] = country
    return PolicyConfig(profiles=profiles, countries=countries, mcc_countries=mcc, **settings)


def load_policy(path: str | Path) -> PolicyConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    return parse_policy(text, source=str(path))


# --- engine ------------------------------------------------------------------------------


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000.0 * math.asin(min(1.0, math.sqrt(h)))


@dataclass(slots=True)
class _Pending:
    target: str
    previous: str | None
    t_s: float
    country: str | None


@dataclass(slots=True)
class _Order:
    target: str
    t_s: float
    country: str | None
    attached: bool = False
    replaced: _Order | None = None
    """The order held before this one: it holds again if this one fails."""


class RoamingPolicy:
    """The decision engine (pure: no I/O, time comes in with each observation)."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.country: str | None = None
        self._country_since = 0.0
        self._candidate: str | None = None
        self._candidate_since = 0.0
        self._candidate_origin: tuple[float, float] | None = None
        self._unregistered_since: float | None = None
        self._pending: _Pending | None = None
        self._failed: dict[tuple[str, str | None], float] = {}
        self._switch_times: deque[float] = deque()
        self._last_hold: str | None = None
        self._order: _Order | None = None
        self._downloads: dict[tuple[str, str], tuple[int, float]] = {}
        """(profile, country) -> (download attempts, time of the last failed one)."""

    @property
    def pending_target(self) -> str | None:
        """The profile whose registration the engine waits for after a switch or order, if any."""
        return self._pending.target if self._pending is not None else None

    @property
    def order_holds(self) -> bool:
        """Whether an ordered profile is enabled, attached and held against the country rules."""
        return self._order is not None and self._order.attached

    # --- inputs -------------------------------------------------------------------------

    def _observed_country(self, obs: Observation) -> str | None:
        if obs.registered and obs.mcc is not None:
            return self.config.mcc_countries.get(obs.mcc[:3])
        if obs.position is not None:
            for rule in self.config.countries.values():
                if rule.contains(obs.position):
                    return rule.country
        return None

    def _track_country(self, obs: Observation, t: float) -> None:
        observed = self._observed_country(obs)
        if observed is None:
            return
        if self.country is None:
            self.country, self._country_since = observed, t
            self._candidate = observed
            return
        if observed == self.country:
            self._candidate = observed
            return
        if observed != self._candidate:
            self._candidate, self._candidate_since, self._candidate_origin = observed, t, obs.position
        dwell_ok = t - self._candidate_since >= self.config.min_dwell_s
        origin, here = self._candidate_origin, obs.position
        distance_ok = (
            origin is None or here is None or distance_m(origin, here) >= self.config.min_border_distance_m
        )
        if dwell_ok and distance_ok:
            self.country, self._country_since = observed, t

    # --- step ---------------------------------------------------------------------------

    def _emit(
        self, kind: DecisionKind, target: str | None, reason: str, obs: Observation, t: float
    ) -> Decision:
        if kind is not DecisionKind.hold:
            self._switch_times.append(t)
            self._last_hold = None
            assert target is not None
            previous = obs.enabled_iccid if kind in (DecisionKind.switch, DecisionKind.download) else None
            self._pending = _Pending(target, previous, t, self.country)
        code = None
        if kind is DecisionKind.download:
            rule = self.config.countries.get(self.country or "")
            code = rule.download if rule is not None else None
        return Decision(kind, target, reason, obs.t_ns, self.country, obs.enabled_iccid, activation_code=code)

    def _recently_failed(self, iccid: str, t: float) -> bool:
        when = self._failed.get((iccid, self.country))
        return when is not None and t - when < self.config.retry_after_s

    def step(self, obs: Observation) -> Decision | None:  # noqa: PLR0911 - one exit per rule
        """Advance to ``obs`` and return the decision to execute, if any."""
        t = obs.t_ns / 1e9
        cfg = self.config
        if obs.registered:
            self._unregistered_since = None
        elif self._unregistered_since is None:
            self._unregistered_since = t
        self._track_country(obs, t)
        while self._switch_times and t - self._switch_times[0] >= 3600.0:
            self._switch_times.popleft()

        pending = self._pending
        if pending is not None:
            if obs.registered and obs.enabled_iccid == pending.target:
                self._pending = None
                if self._order is not None and self._order.target == pending.target:
                    self._order.attached = True
            elif t - pending.t_s >= cfg.attach_deadline_s:
                self._pending = None
                self._failed[(pending.target, pending.country)] = t
                if self._order is not None and self._order.target == pending.target:
                    self._order = self._order.replaced
                if pending.previous is not None and pending.previous != obs.enabled_iccid:
                    reason = (
                        f"no registration on {cfg.label(pending.target)} within {cfg.attach_deadline_s:g} s: "
                        f"back to {cfg.label(pending.previous)}"
                    )
                    return self._emit(DecisionKind.rollback, pending.previous, reason, obs, t)
            else:
                return None

        fallback = cfg.fallback_iccid
        if (
            fallback is not None
            and self._unregistered_since is not None
            and t - self._unregistered_since >= cfg.fallback_after_s
            and obs.enabled_iccid != fallback
            and not self._recently_failed(fallback, t)
        ):
            reason = (
                f"no registration for {t - self._unregistered_since:.0f} s: fallback {cfg.label(fallback)}"
            )
            return self._emit(DecisionKind.fallback, fallback, reason, obs, t)

        if self._holds_order(obs, t):
            return None
        rule = cfg.countries.get(self.country or "")
        if rule is None or obs.enabled_iccid is None:
            return None
        current = obs.enabled_iccid
        desired: str | None = None
        reason = ""
        if rule.allow_roaming is not None and current not in rule.allow_roaming and current != rule.preferred:
            desired = rule.preferred or (rule.allow_roaming[0] if rule.allow_roaming else None)
            reason = f"{cfg.label(current)} may not roam in {rule.country}"
        elif (
            rule.preferred is not None
            and current != rule.preferred
            and t - self._country_since >= rule.max_roaming_s
        ):
            desired = rule.preferred
            reason = (
                f"in {rule.country} for {t - self._country_since:.0f} s: localize to {cfg.label(desired)}"
            )
        if desired is None or desired == current or self._recently_failed(desired, t):
            return None
        if obs.installed is not None and desired not in obs.installed:
            return self._download(rule, desired, reason, obs, t)
        if len(self._switch_times) >= cfg.max_switches_per_hour:
            hold = f"switch cap of {cfg.max_switches_per_hour}/h reached; wanted {cfg.label(desired)}"
            if hold == self._last_hold:
                return None
            self._last_hold = hold
            return self._emit(DecisionKind.hold, None, hold, obs, t)
        return self._emit(DecisionKind.switch, desired, reason, obs, t)

    def _download(
        self, rule: CountryRule, desired: str, reason: str, obs: Observation, t: float
    ) -> Decision | None:
        """The card lacks ``desired``: ask for its download (bounded), or give up once, loudly."""
        cfg = self.config
        if rule.download is None:
            return None  # nothing to switch to and nothing to fetch: keep the current profile
        key = (desired, rule.country)
        attempts, last = self._downloads.get(key, (0, -math.inf))
        if attempts >= cfg.download_attempts:
            hold = (
                f"download of {cfg.label(desired)} for {rule.country} given up after {attempts} attempts; "
                f"staying on {cfg.label(obs.enabled_iccid)}"
            )
            if hold == self._last_hold:
                return None
            self._last_hold = hold
            return self._emit(DecisionKind.hold, None, hold, obs, t)
        if t - last < cfg.download_retry_s:
            return None
        self._downloads[key] = (attempts + 1, last)
        why = f"{reason}; the card holds no {cfg.label(desired)}: download it (attempt {attempts + 1})"
        return self._emit(DecisionKind.download, desired, why, obs, t)

    def _holds_order(self, obs: Observation, t: float) -> bool:
        order = self._order
        if order is None:
            return False
        if order.country is None:
            order.country = self.country  # ordered before any country was known
        limit = self.config.order_hold_s
        if (
            obs.enabled_iccid != order.target
            or self.country != order.country
            or (limit > 0 and t - order.t_s >= limit)
        ):
            self._order = None
            return False
        return True

    def record_order(
        self, target: str, t_ns: int, *, enabled: str | None, command_id: str, reason: str
    ) -> Decision:
        """A backend ordered ``target`` at ``t_ns`` (``enabled``: the profile enabled now).

        Returns the ``order`` decision to execute (and report with :meth:`record_outcome`).
        From now on the engine supervises the attach as for a switch (rollback to
        ``enabled`` after ``attach_deadline_s``), then holds the order (module docstring).
        """
        t = t_ns / 1e9
        self._switch_times.append(t)
        self._last_hold = None
        self._pending = _Pending(target, enabled, t, self.country)
        held = self._order if self._order is not None and self._order.attached else None
        if held is not None:
            held.replaced = None
        self._order = _Order(target, t, self.country, replaced=held)
        return Decision(DecisionKind.order, target, reason, t_ns, self.country, enabled, command_id)

    def record_outcome(self, decision: Decision, ok: bool, *, t_ns: int | None = None) -> None:
        """Tell the engine whether ``decision`` was carried out on the card (at ``t_ns``, if known).

        For a ``download`` the attach deadline runs from ``t_ns``, when the profile was fetched and
        enabled, not from the decision (the download itself takes a while).
        """
        pending = self._pending
        fetched = ok and t_ns is not None and decision.kind is DecisionKind.download
        if fetched and t_ns is not None and pending is not None and pending.target == decision.target_iccid:
            pending.t_s = t_ns / 1e9
        if ok or decision.target_iccid is None:
            return
        self._pending = None
        if decision.kind is DecisionKind.download:
            key = (decision.target_iccid, decision.country or "")
            attempts, _ = self._downloads.get(key, (1, 0.0))
            self._downloads[key] = (attempts, decision.t_ns / 1e9)
            return  # retried after download_retry_s (bounded by download_attempts), not retry_after_s
        self._failed[(decision.target_iccid, decision.country)] = decision.t_ns / 1e9
        if decision.kind is DecisionKind.order and self._order is not None:
            self._order = self._order.replaced
