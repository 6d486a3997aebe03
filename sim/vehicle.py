"""A deterministic kinematic model of an electric car driving a route.

:class:`Vehicle` advances in fixed steps (``step_ms``, default 10 ms). Each step
runs the driver model (accelerate towards the segment's speed limit, brake in
time for lower limits, corners and the end of the route, with a slowly
wandering speed factor), the longitudinal dynamics (aerodynamic drag, rolling
resistance, grade) and the energy model (motor and inverter efficiency,
regeneration, auxiliary load, a pack with open-circuit voltage and internal
resistance). :meth:`Vehicle.signals` returns the physical value of every DBC
signal of ``sim/data/tcu_sim.dbc`` (except the TPMS multiplexer, which the
frame scheduler chooses) for the current step.

All randomness comes from one ``numpy.random.Generator`` seeded from
:attr:`VehicleConfig.seed` and is drawn once per step, so the same seed and the
same number of steps give bit-identical values, whether or not and how often
:meth:`Vehicle.signals` is called.

Scenario: the car stands parked (gear P) for ``park_s`` with the driver's door
open for the first 1.5 s, shifts to D with the brake pressed, signals left
while pulling out, drives the route and stops at its end; there it shifts to
P, unlocks, and the driver's door opens 3 s later.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sim.route import Route

__all__ = ["SIGNAL_NAMES", "ScriptedStop", "Vehicle", "VehicleConfig"]

_G = 9.81
_N_NOISE = 12

SIGNAL_NAMES: tuple[str, ...] = (
    "VehicleSpeed", "LongitudinalAccel", "LateralAccel", "YawRate",
    "WheelSpeedFL", "WheelSpeedFR", "WheelSpeedRL", "WheelSpeedRR",
    "GearPosition", "BrakePedalPressed", "MotorSpeed", "AccelPedalPosition", "BrakePedalPosition",
    "SteeringWheelAngle", "SteeringWheelSpeed",
    "MotorTorque", "MotorTemperature", "InverterTemperature", "MotorPower",
    "PackVoltage", "PackCurrent", "PackTemperature", "StateOfCharge",
    "CellVoltageMin", "CellVoltageMax", "CellTemperatureMin", "CellTemperatureMax",
    "RemainingRange", "EnergyConsumptionAvg", "StateOfHealth", "ChargingState",
    "DoorFrontLeft", "DoorFrontRight", "DoorRearLeft", "DoorRearRight", "Trunk", "CentralLock",
    "LightSwitch", "LowBeam", "HighBeam", "IndicatorLeft", "IndicatorRight", "HazardLights",
    "BrakeLight", "FogLightRear",
    "TirePressureFL", "TireTemperatureFL", "TirePressureFR", "TireTemperatureFR",
    "TirePressureRL", "TireTemperatureRL", "TirePressureRR", "TireTemperatureRR",
    "AmbientTemperature", "CabinTemperature", "CabinSetpoint",
    "Odometer", "TripMeter",
    "Latitude", "Longitude",
    "Altitude", "GnssSpeed", "GnssHeading", "GnssFixType", "SatellitesUsed", "Hdop",
)  # fmt: skip
"""Every signal :meth:`Vehicle.signals` returns (all DBC signals but the TPMS multiplexer)."""

GEAR_P, GEAR_D = 0, 3


@dataclass(frozen=True, slots=True)
class ScriptedStop:
    """Brake from ``at_s`` (simulated s) at ``decel_mps2`` down to a standstill, then stand.

    The deceleration builds up at ``jerk_mps3``. Standing lasts ``hold_s`` (then the driver
    model drives on); with ``hazard_lights`` the hazard lights are on from ``hazard_after_s``
    after the standstill until the end of the hold. The multi-vehicle V2N scenario
    (:mod:`sim.v2n`) uses it for a leader that brakes hard and stops with hazard lights, and
    for followers that stop behind it.
    """

    at_s: float
    decel_mps2: float
    hold_s: float
    hazard_lights: bool = False
    hazard_after_s: float = 0.5
    jerk_mps3: float = 40.0

    def __post_init__(self) -> None:
        if not (self.decel_mps2 > 0 and self.jerk_mps3 > 0 and self.hold_s >= 0 and self.hazard_after_s >= 0):
            raise ValueError(f"invalid scripted stop: {self}")


@dataclass(frozen=True, slots=True)
class VehicleConfig:
    """Parameters of the vehicle and its scenario. Defaults: a 2.1 t electric hatchback."""

    seed: int = 0
    step_ms: int = 10
    start_epoch_us: int = 1_767_261_600_000_000  # only used for the time of day (lights)
    park_s: float = 3.0
    initial_soc_pct: float = 80.0
    initial_odometer_km: float = 23_456.7
    mass_kg: float = 2100.0
    drag_area_m2: float = 0.67  # Cd * A
    rolling_coeff: float = 0.009
    wheel_radius_m: float = 0.33
    gear_ratio: float = 9.0
    wheelbase_m: float = 2.9
    track_m: float = 1.6
    steering_ratio: float = 15.0
    motor_max_torque_nm: float = 400.0
    motor_max_power_kw: float = 150.0
    regen_max_power_kw: float = 80.0
    cells_in_series: int = 96
    capacity_ah: float = 200.0
    pack_resistance_ohm: float = 0.08
    aux_power_w: float = 700.0
    cabin_setpoint_c: float = 21.5
    comfort_decel_mps2: float = 1.6
    max_lateral_accel_mps2: float = 2.5
    utc_offset_h: float = 1.0  # CET, for the time of day
    hard_brakes_s: tuple[float, ...] = ()  # scripted emergency braking: start times (simulated s)
    hard_brake_mps2: float = 7.5  # deceleration of a scripted hard braking
    hard_brake_duration_s: float = 1.5
    # Multi-vehicle scenarios (sim.v2n); the defaults keep the single-car drive as it was.
    initial_speed_kmh: float = 0.0  # > 0: the car is already moving at t = 0 (use with park_s = 0)
    start_distance_m: float = 0.0  # where on the route the car is at t = 0
    cruise_kmh: float | None = None  # target speed instead of the segment's limit (corners still apply)
    lateral_offset_m: float = 0.0  # GNSS position this far to the right of the route's centreline
    stops: tuple[ScriptedStop, ...] = ()  # scripted stops, in time order


class Vehicle:
    """Kinematic vehicle following a :class:`Route`; call :meth:`step` then read :meth:`signals`."""

    def __init__(self, route: Route, config: VehicleConfig | None = None) -> None:
        self.route = route
        self.config = cfg = config or VehicleConfig()
        self._rng = np.random.default_rng(cfg.seed)
        self._dt = cfg.step_ms / 1000.0
        self.steps = 0
        self.t_s = 0.0
        self.distance_m = cfg.start_distance_m
        self.speed_mps = cfg.initial_speed_kmh / 3.6
        self.accel_mps2 = 0.0
        self.arrived_t_s: float | None = None
        # scripted stops: index of the next one, phase ("" / "braking" / "holding"), times
        self._stop_next = 0
        self._stop_phase = ""
        self._stop_still_t_s = 0.0
        self._launch: tuple[float, float, tuple[ScriptedStop, ...]] | None = None
        self._noise = [0.0] * _N_NOISE
        # per-vehicle constants drawn once
        rng = self._rng
        self._wheel_eps = (rng.normal(0.0, 0.002, 4)).tolist()
        self._tyre_cold_kpa = [250.0 + rng.normal(0, 2), 250.0 + rng.normal(0, 2),
                               260.0 + rng.normal(0, 2), 260.0 + rng.normal(0, 2)]  # fmt: skip
        self._leaky_tyre = int(rng.integers(0, 4))
        self._ambient_base_c = 11.0 + float(rng.normal(0.0, 2.0))
        # slowly varying states
        self._speed_factor_dev = 0.0
        self._steer_deg = 0.0
        self._steer_rate_dps = 0.0
        self._soc = cfg.initial_soc_pct / 100.0
        self._pack_temp_c = self._ambient_base_c + 8.0
        self._motor_temp_c = self._ambient_base_c + 2.0
        self._inverter_temp_c = self._ambient_base_c + 2.0
        self._cabin_temp_c = self._ambient_base_c + 2.0
        self._tyre_temp_c = [self._ambient_base_c] * 4
        self._energy_wh = 0.0
        self._pack_current_a = 0.0
        self._pack_voltage_v = self._ocv(self._soc)
        self._motor_torque_nm = 0.0
        self._motor_power_w = 0.0
        self._accel_pedal = 0.0
        self._brake_pedal = 0.0
        self._curvature = 0.0
        self._gnss_err = [0.0, 0.0, 0.0]  # north m, east m, up m
        self._sats = 10.0
        self._hdop = 1.0
        self._gnss_heading_deg = route.pose_at(cfg.start_distance_m).heading_deg
        self._cache_step = -1
        self._cache: dict[str, float] = {}

    # ------------------------------------------------------------------ model
    def _ocv(self, soc: float) -> float:
        return self.config.cells_in_series * (3.45 + 0.72 * soc)

    def _target_speed_mps(self) -> float:
        cfg, route, s, v = self.config, self.route, self.distance_m, self.speed_mps
        b = cfg.comfort_decel_mps2
        factor = 1.0 + self._speed_factor_dev
        pose_seg = route.segment_at(s)
        limit = route.waypoints[pose_seg].limit_kmh if cfg.cruise_kmh is None else cfg.cruise_kmh
        target = limit / 3.6 * factor
        horizon = v * v / (2.0 * b) + 300.0
        for ahead, limit_kmh in route.limits_ahead(s, horizon):
            allowed = math.sqrt((limit_kmh / 3.6) ** 2 + 2.0 * b * max(0.0, ahead - 40.0))
            target = min(target, allowed)
        for ahead, turn_rad, length_m in route.corner_ahead(s, horizon):
            peak_k = 1.5 * abs(turn_rad) / length_m
            if peak_k > 0.0:
                corner = math.sqrt(cfg.max_lateral_accel_mps2 / peak_k)
                target = min(target, math.sqrt(corner * corner + 2.0 * b * ahead))
        remaining = route.length_m - s
        return min(target, math.sqrt(2.0 * b * max(0.0, remaining - 2.0)))

    def launch_at(self, t_s: float, speed_kmh: float, stops: tuple[ScriptedStop, ...] = ()) -> None:
        """From the first step at or after ``t_s``: drive at ``speed_kmh`` at once, with ``stops``.

        For a car that stood parked (``park_s`` beyond any drive) while something else got
        ready: the multi-vehicle scenario (:mod:`sim.v2n`) parks its cars until every agent
        is up, then sets them all going at the same simulated time. Safe to call from another
        thread than the one stepping (one attribute is replaced).
        """
        self._launch = (t_s, speed_kmh, tuple(stops))

    def step(self) -> None:
        """Advance the model by one step of ``step_ms``."""
        noise = self._rng.standard_normal(_N_NOISE).tolist()
        self._noise = noise
        self.steps += 1
        self.t_s = self.steps * self._dt
        launch = self._launch
        if launch is not None and self.t_s >= launch[0] - 1e-9:
            self._launch = None
            self.speed_mps = launch[1] / 3.6
            self.config = dataclasses.replace(
                self.config, park_s=self.t_s, initial_speed_kmh=launch[1], stops=launch[2]
            )
        cfg, dt = self.config, self._dt
        v = self.speed_mps
        # driver: speed factor wanders around 1 (Ornstein-Uhlenbeck, ~1.5 % std, 30 s)
        self._speed_factor_dev += (
            -self._speed_factor_dev * dt / 30.0 + 0.015 * math.sqrt(2 * dt / 30.0) * noise[0]
        )
        driving = self.t_s >= cfg.park_s and self.arrived_t_s is None
        stop = self._scripted_stop() if driving and cfg.stops else None
        if stop is not None and self._stop_phase == "holding":
            self.accel_mps2, self.speed_mps = 0.0, 0.0  # standing still (gear D, brake pressed)
        elif driving:
            target = self._target_speed_mps()
            a_cmd = 0.45 * (target - v)
            a_max = min(2.5, cfg.motor_max_power_kw * 1000.0 * 0.9 / (cfg.mass_kg * max(v, 1.0)))
            a_cmd = max(-3.5, min(a_max, a_cmd))
            jerk = 2.0 * dt
            if v > 2.0 and any(t0 <= self.t_s < t0 + cfg.hard_brake_duration_s for t0 in cfg.hard_brakes_s):
                a_cmd, jerk = -cfg.hard_brake_mps2, 40.0 * dt  # emergency stop: full brake, fast build-up
            if stop is not None:
                a_cmd, jerk = -stop.decel_mps2, stop.jerk_mps3 * dt
            a = self.accel_mps2 + max(-jerk, min(jerk, a_cmd - self.accel_mps2))
            v_new = v + a * dt
            remaining = self.route.length_m - self.distance_m
            if v_new <= 0.0 or (remaining < 3.0 and v_new < 0.4):
                a = -v / dt if v > 0 else 0.0
                v_new = 0.0
                if remaining < 3.0:
                    self.arrived_t_s = self.t_s
                if stop is not None:
                    self._stop_phase, self._stop_still_t_s = "holding", self.t_s
            self.distance_m = min(self.route.length_m, self.distance_m + 0.5 * (v + v_new) * dt)
            self.accel_mps2, self.speed_mps = a, v_new
        else:
            self.accel_mps2, self.speed_mps = 0.0, 0.0
        v = self.speed_mps
        a = self.accel_mps2
        # steering from path curvature (positive curvature = right turn; steering positive = left)
        k = self.route.curvature_at(self.distance_m)
        self._curvature = k
        steer = -cfg.steering_ratio * math.degrees(math.atan(cfg.wheelbase_m * k))
        self._steer_rate_dps = (steer - self._steer_deg) / dt
        self._steer_deg = steer
        # longitudinal forces and energy
        slope = self.route.slope_at(self.distance_m)
        f_resist = (
            (0.5 * 1.2 * cfg.drag_area_m2 * v * v + cfg.rolling_coeff * cfg.mass_kg * _G) if v > 0 else 0.0
        )
        f_total = cfg.mass_kg * a + f_resist + (cfg.mass_kg * _G * slope if v > 0 else 0.0)
        wheel_force_max = cfg.motor_max_torque_nm * cfg.gear_ratio / cfg.wheel_radius_m
        liftoff_regen_n = cfg.mass_kg * 0.8
        if f_total >= 0.0:
            f_motor = min(f_total, wheel_force_max)
            self._accel_pedal = min(100.0, 100.0 * f_motor / wheel_force_max + 2.0 * (f_motor > 0))
            self._brake_pedal = 0.0
        else:
            regen_cap = min(liftoff_regen_n, cfg.regen_max_power_kw * 1000.0 / max(v, 1.0))
            f_motor = max(f_total, -regen_cap)
            self._accel_pedal = 0.0
            friction = -f_total - regen_cap
            self._brake_pedal = min(
                100.0, 100.0 * max(0.0, friction) / (cfg.mass_kg * 8.0) + 8.0 * (friction > 0)
            )
        if not driving and self.t_s >= cfg.park_s - 1.0 and self.arrived_t_s is None:
            self._brake_pedal = 30.0  # foot on the brake to shift into D
        if self._stop_phase == "holding":
            self._brake_pedal = 30.0  # standing in a lane, foot on the brake
        self._motor_torque_nm = f_motor * cfg.wheel_radius_m / cfg.gear_ratio
        p_mech = f_motor * v
        self._motor_power_w = p_mech
        p_elec = (p_mech / 0.9 if p_mech >= 0 else p_mech * 0.75) + cfg.aux_power_w
        ocv = self._ocv(self._soc)
        r = cfg.pack_resistance_ohm
        current = (ocv - math.sqrt(max(ocv * ocv - 4.0 * r * p_elec, 0.0))) / (2.0 * r)
        self._pack_current_a = current
        self._pack_voltage_v = ocv - current * r
        self._soc -= current * dt / 3600.0 / cfg.capacity_ah
        self._energy_wh += p_elec * dt / 3600.0
        # thermal states (first-order lags)
        amb = self._ambient_c()
        self._pack_temp_c += dt * (
            current * current * r / 60_000.0 - (self._pack_temp_c - amb - 6.0) / 3600.0
        )
        motor_target = amb + 15.0 + 0.35 * abs(p_mech) / 1000.0
        self._motor_temp_c += dt * (motor_target - self._motor_temp_c) / 300.0
        self._inverter_temp_c += dt * (motor_target - 5.0 - self._inverter_temp_c) / 200.0
        self._cabin_temp_c += dt * (cfg.cabin_setpoint_c - self._cabin_temp_c) / 240.0
        tyre_target = amb + 0.12 * v * 3.6
        for i in range(4):
            self._tyre_temp_c[i] += dt * (tyre_target + 0.5 * i - self._tyre_temp_c[i]) / 400.0
        # GNSS error: smooth random walk around 0 (~1 m horizontal, ~2 m vertical)
        g = self._gnss_err
        for i, (sigma, tau) in enumerate(((0.8, 20.0), (0.8, 20.0), (2.0, 40.0))):
            g[i] += -g[i] * dt / tau + sigma * math.sqrt(2 * dt / tau) * noise[1 + i]
        self._sats = min(14.0, max(7.0, self._sats + 0.05 * noise[4] * math.sqrt(dt)))
        self._hdop = min(1.6, max(0.7, self._hdop + 0.02 * noise[5] * math.sqrt(dt)))

    def _scripted_stop(self) -> ScriptedStop | None:
        """The scripted stop in progress (braking or holding) at this step, if any."""
        stops = self.config.stops
        if self._stop_phase == "holding" and self.t_s >= self._stop_still_t_s + stops[self._stop_next].hold_s:
            self._stop_phase = ""  # the hold is over: drive on
            self._stop_next += 1
        if not self._stop_phase and self._stop_next < len(stops) and self.t_s >= stops[self._stop_next].at_s:
            self._stop_phase = "braking" if self.speed_mps > 0.0 else "holding"
            self._stop_still_t_s = self.t_s
        return stops[self._stop_next] if self._stop_phase else None

    def _hazard_lights(self) -> bool:
        if self._stop_phase != "holding":
            return False
        stop = self.config.stops[self._stop_next]
        return stop.hazard_lights and self.t_s >= self._stop_still_t_s + stop.hazard_after_s

    def _ambient_c(self) -> float:
        return self._ambient_base_c + 0.8 * math.sin(2.0 * math.pi * self.t_s / 1800.0)

    def _is_dark(self) -> bool:
        t_s = self.config.start_epoch_us / 1e6 + self.t_s + self.config.utc_offset_h * 3600.0
        hour = (t_s / 3600.0) % 24.0
        return hour < 7.5 or hour >= 17.0

    # ---------------------------------------------------------------- signals
    def signals(self) -> dict[str, float]:
        """Physical value of every signal in :data:`SIGNAL_NAMES` at the current step (cached per step)."""
        if self._cache_step == self.steps:
            return self._cache
        cfg, noise = self.config, self._noise
        v, a, k = self.speed_mps, self.accel_mps2, self._curvature
        kmh = v * 3.6
        pose = self.route.pose_at(self.distance_m)
        arrived = self.arrived_t_s is not None
        t_stop = self.t_s - self.arrived_t_s if self.arrived_t_s is not None else 0.0
        driving = self.t_s >= cfg.park_s and not arrived
        gear = GEAR_D if driving or (arrived and t_stop < 1.0) else GEAR_P
        # wheel speeds: radius deviation, inner/outer wheel in turns (k > 0 is a right turn)
        half_track_k = 0.5 * cfg.track_m * k
        wheel = []
        for i, side in enumerate((1.0, -1.0, 1.0, -1.0)):  # left wheels are outer in a right turn
            w = kmh * (1.0 + self._wheel_eps[i] + side * half_track_k) + (
                0.02 * noise[6 + i] if v > 0 else 0.0
            )
            wheel.append(min(300.0, max(0.0, w)))
        yaw_dps = -math.degrees(k) * v
        lat_acc = -k * v * v
        # indicators
        left = right = False
        if driving and cfg.park_s <= self.t_s < cfg.park_s + 3.0 and cfg.initial_speed_kmh == 0.0:
            left = True
        for ahead, turn_rad, _length in self.route.corner_ahead(self.distance_m, 250.0):
            if ahead < 250.0 and abs(math.degrees(turn_rad)) >= 12.0 and v > 0:
                right, left = turn_rad > 0, turn_rad < 0
                break
        blink_on = (self.t_s % 0.8) < 0.4
        dark = self._is_dark()
        parked_at_start = self.t_s < 1.5 and cfg.initial_speed_kmh == 0.0
        door_fl = 1.0 if (parked_at_start or (arrived and t_stop >= 3.0)) else 0.0
        locked = 1.0 if (self.distance_m > 50.0 and not (arrived and t_stop >= 2.0)) else 0.0
        brake_pressed = self._brake_pedal > 1.0
        soc_pct = min(100.0, max(0.0, self._soc * 100.0))
        km = self.distance_m / 1000.0
        consumption = min(100.0, max(0.0, self._energy_wh / 1000.0 / km * 100.0)) if km > 1.0 else 17.5
        range_km = min(1000.0, soc_pct / 100.0 * 75.0 * 0.965 / max(consumption, 5.0) * 100.0)
        cell_v = self._pack_voltage_v / cfg.cells_in_series
        amb = self._ambient_c()
        tyres: list[float] = []
        for i in range(4):
            t_c = self._tyre_temp_c[i]
            p = self._tyre_cold_kpa[i] * (t_c + 273.15) / (self._ambient_base_c + 273.15)
            if i == self._leaky_tyre:
                p -= 1.5 * self.t_s / 3600.0
            tyres += [p + 0.05 * noise[10], t_c]
        # GNSS
        n_err, e_err, u_err = self._gnss_err
        if cfg.lateral_offset_m:  # to the right of the direction of travel
            to_right = math.radians(pose.heading_deg + 90.0)
            n_err += cfg.lateral_offset_m * math.cos(to_right)
            e_err += cfg.lateral_offset_m * math.sin(to_right)
        lat = pose.lat_deg + n_err / 111_195.0
        lon = pose.lon_deg + e_err / (111_195.0 * math.cos(math.radians(pose.lat_deg)))
        if v > 1.0:
            self._gnss_heading_deg = (pose.heading_deg + 0.3 * noise[11]) % 360.0
        heading = round(self._gnss_heading_deg, 2) % 360.0
        values = {
            "VehicleSpeed": kmh,
            "LongitudinalAccel": a + (0.01 * noise[9] if v > 0 else 0.0),
            "LateralAccel": lat_acc,
            "YawRate": yaw_dps,
            "WheelSpeedFL": wheel[0],
            "WheelSpeedFR": wheel[1],
            "WheelSpeedRL": wheel[2],
            "WheelSpeedRR": wheel[3],
            "GearPosition": float(gear),
            "BrakePedalPressed": float(brake_pressed),
            "MotorSpeed": v / cfg.wheel_radius_m * cfg.gear_ratio * 60.0 / (2.0 * math.pi),
            "AccelPedalPosition": self._accel_pedal,
            "BrakePedalPosition": self._brake_pedal,
            "SteeringWheelAngle": self._steer_deg,
            "SteeringWheelSpeed": max(-1000.0, min(1000.0, self._steer_rate_dps)),
            "MotorTorque": self._motor_torque_nm,
            "MotorTemperature": self._motor_temp_c,
            "InverterTemperature": self._inverter_temp_c,
            "MotorPower": self._motor_power_w / 1000.0,
            "PackVoltage": self._pack_voltage_v,
            "PackCurrent": self._pack_current_a,
            "PackTemperature": self._pack_temp_c,
            "StateOfCharge": soc_pct,
            "CellVoltageMin": cell_v - 0.004 - 0.00005 * abs(self._pack_current_a),
            "CellVoltageMax": cell_v + 0.004,
            "CellTemperatureMin": self._pack_temp_c - 1.5,
            "CellTemperatureMax": self._pack_temp_c + 2.0,
            "RemainingRange": range_km,
            "EnergyConsumptionAvg": consumption,
            "StateOfHealth": 96.5,
            "ChargingState": 0.0,
            "DoorFrontLeft": door_fl,
            "DoorFrontRight": 0.0,
            "DoorRearLeft": 0.0,
            "DoorRearRight": 0.0,
            "Trunk": 0.0,
            "CentralLock": locked,
            "LightSwitch": 1.0,
            "LowBeam": float(dark and gear != GEAR_P),
            "HighBeam": float(dark and kmh > 90.0),
            "IndicatorLeft": float(left and blink_on),
            "IndicatorRight": float(right and blink_on),
            "HazardLights": float(self._hazard_lights()),
            "BrakeLight": float(brake_pressed or a < -1.3),
            "FogLightRear": 0.0,
            "TirePressureFL": tyres[0],
            "TireTemperatureFL": tyres[1],
            "TirePressureFR": tyres[2],
            "TireTemperatureFR": tyres[3],
            "TirePressureRL": tyres[4],
            "TireTemperatureRL": tyres[5],
            "TirePressureRR": tyres[6],
            "TireTemperatureRR": tyres[7],
            "AmbientTemperature": amb,
            "CabinTemperature": self._cabin_temp_c,
            "CabinSetpoint": cfg.cabin_setpoint_c,
            "Odometer": cfg.initial_odometer_km + km,
            "TripMeter": km,
            "Latitude": lat,
            "Longitude": lon,
            "Altitude": pose.altitude_m + u_err,
            "GnssSpeed": max(0.0, kmh + (0.05 * noise[8] if v > 0 else 0.0)),
            "GnssHeading": heading,
            "GnssFixType": 2.0,
            "SatellitesUsed": float(round(self._sats)),
            "Hdop": self._hdop,
        }
        self._cache_step = self.steps
        self._cache = values
        return values
