"""A simulated vehicle: CAN frames from a DBC, over simulated time.

:class:`VehicleSimulator` turns any cantools database into a stream of :class:`can.Message`
frames. Each message is sent at its DBC cycle time (``GenMsgCycleTime``, 100 ms when absent) with
a little jitter; multiplexed messages cycle through their multiplexer values; J1939 messages are
29-bit frames padded with 1s; CAN FD messages are sent as FD frames.

Signals of the project's own demo car (:data:`DEMO_DBC`) come from a physical model of a drive:
idling, pulling away, shifting up, cruising, braking, waiting at lights, turning with the
indicator on, reversing and parking; speed, wheel speeds, engine speed, gear, pedals, steering,
battery and temperatures agree with each other. Any other signal follows a smooth random walk
inside its range, and signals named like rolling counters and checksums behave like them. As on
real cars, most signals hold still most of the time, so many frames repeat their payload.

Everything is deterministic for a given seed. :func:`run_simulation` plays frames onto a
python-can bus in real time (or faster).
"""

from __future__ import annotations

import copy
import errno
import heapq
import math
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import can
from cantools.database.can import Database, Message, Signal
from cantools.database.errors import Error as CantoolsError

from edge.bundled import DEMO_DBC, OBD2_DBC

if TYPE_CHECKING:
    from edge.simulator.ecus import SimulatedEcus

__all__ = ["DEMO_DBC", "OBD2_DBC", "VehicleSimulator", "run_simulation", "simulated_ecus"]

_DEFAULT_CYCLE_TIME = 0.1  # s, for messages without GenMsgCycleTime
_JITTER = 0.01  # standard deviation of the send time, as a fraction of the cycle time
_STEP = 0.01  # s, the drive model's time step

_Raw = int | float
_Source = Callable[[], _Raw]

# --------------------------------------------------------------------------------------------
# The demo car


_P, _R, _N, _D = 0, 1, 2, 3  # selector lever, as in the DBC's TCM_GearLever value table
_GEAR_RATIOS = (4.17, 2.34, 1.52, 1.14, 0.87, 0.69)
_REVERSE_RATIO = 3.40
_FINAL_DRIVE = 3.73
_WHEEL_RADIUS = 0.32  # m
_UPSHIFT_KMH = (18.0, 32.0, 50.0, 70.0, 90.0)  # from gear n to n + 1
_WHEELBASE = 2.8  # m
_HALF_TRACK = 0.8  # m
_STEERING_RATIO = 15.0
_CELLS = 96
_MODULES = 8
_CAPACITY_AH = 25.0
_PACK_RESISTANCE = 0.11  # ohm
_TANK_LITRES = 50.0
_REFERENCE_TORQUE = 400.0  # Nm, 100 % in J1939 EEC1
_METRES_PER_DEGREE = 111_320.0
_LANES = (0.0, 3.5, -3.5)  # lateral offset of the lanes the ADAS objects drive in, m


@dataclass(frozen=True)
class _Segment:
    """One piece of the drive: the driver aims at ``target_kmh`` with the lever in ``lever``.

    A segment lasts ``duration`` seconds; a stop (``target_kmh == 0``) counts only the seconds
    spent standing still, so the car always reaches a standstill before the next segment.
    """

    lever: int
    target_kmh: float
    duration: float
    steering_deg: float = 0.0  # held while slower than 30 km/h (turning at a junction)
    indicator: int = 0  # 1 = left, -1 = right
    emergency: bool = False  # a stop braked as hard as an emergency (about 8 m/s2)


def _drive_cycle(rng: random.Random) -> Iterator[_Segment]:
    """An endless, varied drive: park, drive a few legs with lights and turns, sometimes reverse."""
    yield _Segment(_P, 0.0, rng.uniform(5.0, 15.0))
    first = True  # the first loop has a harsh braking and a reverse manoeuvre (campaign demo)
    while True:
        yield _Segment(_D, 0.0, rng.uniform(1.0, 2.0))
        for leg in range(rng.randint(2, 4)):
            yield _Segment(
                _D, rng.choice((30.0, 50.0, 50.0, 70.0, 100.0, 120.0)), rng.uniform(15, 40)
            )
            if first and leg == 0:  # inserted without drawing from rng: the rest is unchanged
                yield _Segment(_D, 0.0, 4.0, emergency=True)
            if rng.random() < 0.5:
                side = rng.choice((1, -1))
                yield _Segment(_D, 20.0, 8.0, indicator=side)
                yield _Segment(_D, 18.0, 6.0, side * rng.uniform(150.0, 400.0), side)
            else:
                yield _Segment(_D, 0.0, rng.uniform(5.0, 40.0))  # traffic lights
        yield _Segment(_D, 0.0, rng.uniform(3.0, 8.0))
        if rng.random() < 0.4 or first:
            first = False
            side = rng.choice((1, -1))
            yield _Segment(_R, 0.0, 1.0)
            yield _Segment(_R, 6.0, 5.0, side * rng.uniform(200.0, 450.0))
            yield _Segment(_R, 0.0, 2.0)
        if rng.random() < 0.3:
            yield _Segment(_P, 0.0, rng.uniform(10.0, 40.0))


@dataclass
class _TrackedObject:
    """A vehicle the ADAS camera tracks, in one of the lanes of :data:`_LANES`."""

    lane: float
    present: bool = False
    distance: float = 0.0  # m ahead
    lateral: float = 0.0  # m, positive = left
    speed: float = 0.0  # m/s over ground
    speed_factor: float = 1.0  # how much faster than the traffic target this driver goes
    kind: int = 1  # ADAS_ObjN_Class
    respawn_at: float = 0.0


class _DriveModel:
    """Physical state of the demo car, advanced in fixed :data:`_STEP` steps."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"vehicle:{seed}")
        self._rng = rng
        self.noise = random.Random(f"sensor-noise:{seed}")  # read-time jitter of sensors
        self._segments = _drive_cycle(random.Random(f"drive-cycle:{seed}"))
        self._segment = next(self._segments)
        self._segment_elapsed = 0.0
        self.time = 0.0

        self.lever = _P
        self.parking_brake = True
        self.speed = 0.0  # m/s, always >= 0; the lever gives the direction
        self.accel = 0.0  # m/s2 along the direction of travel
        self.pedal = 0.0  # %
        self.brake = 0.0  # bar
        self.steering = 0.0  # deg at the wheel, positive = left
        self.steering_rate = 0.0  # deg/s
        self._steering_trim = 0.0  # the driver's small corrections on a straight road
        self.yaw_rate = 0.0  # deg/s, positive = left
        self.heading = rng.uniform(0.0, 2 * math.pi)  # rad, clockwise from north
        self.latitude = 48.78 + rng.uniform(-0.05, 0.05)
        self.longitude = 9.18 + rng.uniform(-0.05, 0.05)

        self.gear = 0
        self.shift_until = -1.0
        self.converter_locked = False
        self.engine_running = True
        self._standing_time = 0.0
        self.engine_speed = 900.0
        self.torque = 12.0
        self.demand_torque = 0.0

        self._ambient_base = rng.uniform(-5.0, 28.0)
        self.ambient = self._ambient_base
        warm_start = rng.random() < 0.5
        self.coolant = self.ambient + (rng.uniform(40.0, 70.0) if warm_start else rng.uniform(0, 3))
        self.engine_oil = self.coolant - 5.0 if warm_start else self.coolant
        self.transmission_oil = self.ambient + (rng.uniform(20.0, 45.0) if warm_start else 0.0)
        self.intake_air = self.ambient + 8.0

        self.soc = rng.uniform(55.0, 85.0)  # %
        self.current = 2.0  # A, positive = discharge
        self.pack_temperature = self.ambient + rng.uniform(0.0, 6.0)
        self._module_voltage_error = [rng.gauss(0.0, 0.002) for _ in range(_MODULES)]
        self._module_temperature_offset = [rng.uniform(-1.5, 1.5) for _ in range(_MODULES)]

        self.odometer = rng.uniform(3_000.0, 90_000.0)  # km
        self.fuel = rng.uniform(25.0, 90.0)  # %
        self.low_beam = rng.random() < 0.3
        self._tyre_radius_error = [rng.gauss(0.0, 0.002) for _ in range(4)]
        self._tyre_cold_pressure = [rng.uniform(2.3, 2.6) for _ in range(4)]
        self.tyre_temperature = [self.ambient] * 4
        self.objects = [_TrackedObject(lane) for lane in _LANES]
        self.visible: list[_TrackedObject] = []

    # -- advancing ---------------------------------------------------------------------------

    def advance_to(self, t: float) -> None:
        """Step the model until its time is within one step of ``t`` (seconds)."""
        while self.time + _STEP <= t:
            self._step(_STEP)

    def _step(self, dt: float) -> None:
        self.time += dt
        self._drive(dt)
        self._move(dt)
        self._powertrain(dt)
        self._battery(dt)
        self._heat(dt)
        self._traffic(dt)

    def _drive(self, dt: float) -> None:
        """The driver: follow the drive cycle with pedal, brake, lever and steering wheel."""
        segment = self._segment
        standing = self.speed < 0.01
        if segment.target_kmh > 0 or standing:
            self._segment_elapsed += dt
        if self._segment_elapsed >= segment.duration:
            self._segment = segment = next(self._segments)
            self._segment_elapsed = 0.0

        if segment.lever != self.lever and standing and self.brake > 8.0:
            self.lever = segment.lever
            self.parking_brake = self.lever == _P
        target = segment.target_kmh / 3.6 if segment.lever == self.lever else 0.0
        pedal_goal = brake_goal = 0.0
        if self.lever in (_P, _N):
            # Shifting out of P or N needs a foot on the brake.
            brake_goal = 15.0 if segment.lever != self.lever else 0.0
        elif target == 0.0 and segment.emergency and not standing:
            brake_goal = 90.0
        elif target == 0.0:
            brake_goal = 12.0 if standing else min(35.0, 10.0 + 1.2 * self.speed)
        else:
            error = target - self.speed
            if error > 0.5:
                pedal_goal = min(75.0, self._cruise_pedal() + 15.0 + 5.0 * error)
            elif error < -1.5:
                brake_goal = min(30.0, 3.0 - 4.0 * error)
            else:
                pedal_goal = self._cruise_pedal() + 8.0 * error
        self.pedal += (min(max(pedal_goal, 0.0), 100.0) - self.pedal) * min(1.0, dt / 0.4)
        self.brake += (brake_goal - self.brake) * min(1.0, dt / 0.25)

        moving = self.speed > 1.0
        if moving and self._rng.random() < dt / 2.0:
            self._steering_trim = self._rng.gauss(0.0, 1.5)
        elif not moving:
            self._steering_trim = 0.0
        turning = segment.lever == self.lever and self.speed * 3.6 < 30.0
        steering_goal = (segment.steering_deg if turning else 0.0) + self._steering_trim
        rate = min(max((steering_goal - self.steering) / 0.35, -360.0), 360.0)
        self.steering_rate = rate
        self.steering += rate * dt

    def _cruise_pedal(self) -> float:
        """Pedal position that holds the current speed."""
        return 100.0 * self._resistance() / self._max_drive_accel() + 2.0

    def _resistance(self) -> float:
        return 0.12 + 0.0004 * self.speed * self.speed if self.speed > 0 else 0.0

    def _max_drive_accel(self) -> float:
        return max(0.8, 3.2 - 0.012 * self.speed * 3.6)

    def _move(self, dt: float) -> None:
        """Longitudinal and lateral motion, position and odometer."""
        in_gear = self.lever in (_D, _R)
        drive = self.pedal / 100.0 * self._max_drive_accel() if in_gear else 0.0
        creep = 0.35 if in_gear and self.pedal < 1.0 and self.speed < 1.8 else 0.0
        braking = 0.09 * self.brake + (3.0 if self.parking_brake else 0.0)
        speed = max(0.0, self.speed + (drive + creep - self._resistance() - braking) * dt)
        self.accel = (speed - self.speed) / dt
        self.speed = speed

        direction = -1.0 if self.lever == _R else 1.0
        road_wheel = math.radians(self.steering / _STEERING_RATIO)
        yaw = direction * self.speed * math.tan(road_wheel) / _WHEELBASE  # rad/s
        self.yaw_rate = math.degrees(yaw)
        self.heading = (self.heading - yaw * dt) % (2 * math.pi)
        travelled = direction * self.speed * dt
        self.latitude += travelled * math.cos(self.heading) / _METRES_PER_DEGREE
        self.longitude += (
            travelled
            * math.sin(self.heading)
            / (_METRES_PER_DEGREE * math.cos(math.radians(self.latitude)))
        )
        self.odometer += self.speed * dt / 1000.0

    def _powertrain(self, dt: float) -> None:
        """Automatic gearbox, torque converter, engine start-stop, engine speed and torque."""
        kmh = self.speed * 3.6
        gear = self.gear
        if self.lever == _D:
            gear = max(gear, 1)
            if gear < 6 and kmh > _UPSHIFT_KMH[gear - 1] + 0.2 * self.pedal:
                gear += 1
            elif gear > 1 and kmh < _UPSHIFT_KMH[gear - 2] - 8.0:
                gear -= 1
        else:
            gear = -1 if self.lever == _R else 0
        if gear != self.gear:
            if gear > 0 and self.gear > 0:
                self.shift_until = self.time + 0.4
            self.gear = gear
        self.converter_locked = gear >= 3 and kmh > 40.0 and self.pedal < 70.0

        # Hybrid start-stop: the engine rests while the car waits in D, once it is warm and the
        # battery can take the load, and starts again as the driver pulls away.
        self._standing_time = self._standing_time + dt if self.speed < 0.01 else 0.0
        can_rest = self.coolant > 40.0 and self.soc > 40.0 and self.lever == _D
        if self.engine_running and can_rest and self._standing_time > 2.0 and self.pedal < 1.0:
            self.engine_running = False
        elif not self.engine_running and (not can_rest or self.pedal > 1.0 or self.speed > 0.3):
            self.engine_running = True
            self.engine_speed = max(self.engine_speed, 250.0)  # the starter cranks it

        idle = 750.0 + 6.0 * max(0.0, 40.0 - self.coolant)
        if not self.engine_running:
            rpm_goal = 0.0
        elif gear != 0 and self.speed > 0.3:
            ratio = _REVERSE_RATIO if gear < 0 else _GEAR_RATIOS[gear - 1]
            wheel_rpm = self.speed / (2 * math.pi * _WHEEL_RADIUS) * 60.0
            slip = 0.0 if self.converter_locked else 80.0 + 12.0 * self.pedal
            rpm_goal = max(idle, wheel_rpm * ratio * _FINAL_DRIVE + slip)
        else:
            rpm_goal = idle
        self.engine_speed += (rpm_goal - self.engine_speed) * min(1.0, dt / 0.12)
        if not self.engine_running and self.engine_speed < 50.0:
            self.engine_speed = 0.0

        self.demand_torque = 15.0 + 2.9 * self.pedal if self.pedal > 0.5 else 0.0
        if not self.engine_running:
            torque_goal = 0.0
        elif self.pedal > 0.5:
            torque_goal = self.demand_torque
        elif gear != 0 and self.speed > 2.0:
            torque_goal = -20.0  # fuel cut, engine braking
        else:
            torque_goal = 12.0
        self.torque += (torque_goal - self.torque) * min(1.0, dt / 0.1)
        if abs(self.torque - torque_goal) < 0.1:
            self.torque = torque_goal
        power_kw = max(self.torque, 0.0) * self.engine_speed / 9549.0
        litres = (0.0003 + 0.00008 * power_kw) * dt if self.engine_running else 0.0
        self.fuel = max(0.0, self.fuel - 100.0 * litres / _TANK_LITRES)

    def _battery(self, dt: float) -> None:
        """Hybrid assist and regeneration, state of charge and pack heating."""
        power_kw = 0.8  # DC/DC converter and auxiliaries
        if self.pedal > 25.0:
            power_kw += 0.45 * (self.pedal - 25.0)
        if self.speed > 0.5:
            if self.brake > 1.0:
                power_kw -= min(25.0, 0.8 * self.brake)
            elif self.pedal < 1.0:
                power_kw -= 2.5
        if self.soc < 35.0 and 0.0 < self.pedal < 40.0:
            power_kw -= 6.0  # the engine charges the pack
        current_goal = power_kw * 1000.0 / self.open_circuit_voltage
        self.current += (current_goal - self.current) * min(1.0, dt / 0.2)
        self.soc = min(100.0, max(0.0, self.soc - self.current * dt / 36.0 / _CAPACITY_AH))
        heating = self.current * self.current * _PACK_RESISTANCE / 60_000.0
        cooling = (self.pack_temperature - self.battery_coolant) * 0.0005
        self.pack_temperature += (heating - cooling) * dt

    def _heat(self, dt: float) -> None:
        """Ambient air, engine and gearbox warming up, tyres."""
        kmh = self.speed * 3.6
        self.ambient = self._ambient_base + 0.4 * math.sin(2 * math.pi * self.time / 900.0)
        if self.engine_running:
            self.coolant += (92.0 - self.coolant) * 0.006 * dt
        else:
            self.coolant += (self.ambient - self.coolant) * 0.0005 * dt
        self.engine_oil += (self.coolant + 5.0 - self.engine_oil) * 0.003 * dt
        gearbox_goal = min(85.0, self.coolant - 5.0)
        self.transmission_oil += (gearbox_goal - self.transmission_oil) * 0.002 * dt
        intake_goal = self.ambient + max(3.0, 12.0 - 0.1 * kmh)
        self.intake_air += (intake_goal - self.intake_air) * 0.05 * dt
        for i, temperature in enumerate(self.tyre_temperature):
            self.tyre_temperature[i] = (
                temperature + (self.ambient + 0.2 * kmh - temperature) * 0.002 * dt
            )

    def _traffic(self, dt: float) -> None:
        """Vehicles ahead that the ADAS camera tracks while driving forwards."""
        rng = self._rng
        for obj in self.objects:
            if self.lever != _D:
                obj.present = False
                continue
            if not obj.present:
                if self.time >= obj.respawn_at and self.speed > 4.0:
                    obj.present = True
                    obj.distance = rng.uniform(25.0, 90.0)
                    obj.lateral = obj.lane + rng.gauss(0.0, 0.3)
                    obj.speed = self.speed + rng.gauss(0.0, 1.5)
                    obj.speed_factor = rng.uniform(0.9, 1.1)
                    obj.kind = rng.choices((1, 2, 3, 5), (70, 20, 7, 3))[0]
                continue
            goal = self._segment.target_kmh / 3.6 * obj.speed_factor
            obj.speed += min(max(goal - obj.speed, -3.0 * dt), 1.5 * dt)
            obj.distance += (obj.speed - self.speed) * dt
            obj.lateral += (obj.lane - obj.lateral) * 0.1 * dt
            if not 3.0 < obj.distance < 160.0:
                obj.present = False
                obj.respawn_at = self.time + rng.uniform(2.0, 12.0)
        self.visible = sorted((o for o in self.objects if o.present), key=lambda o: o.distance)

    # -- derived quantities, read by the signal getters --------------------------------------

    @property
    def open_circuit_voltage(self) -> float:
        """Pack open-circuit voltage at the current state of charge."""
        return _CELLS * (3.45 + 0.007 * self.soc)

    @property
    def pack_voltage(self) -> float:
        """Pack terminal voltage under the current load."""
        return self.open_circuit_voltage - self.current * _PACK_RESISTANCE

    @property
    def battery_coolant(self) -> float:
        """Battery coolant inlet temperature."""
        return self.ambient + 0.3 * (self.pack_temperature - self.ambient)

    @property
    def battery_ready(self) -> bool:
        """Contactors closed (after a short precharge at start-up)."""
        return self.time >= 0.3

    def wheel_speed(self, wheel: int) -> float:
        """Speed of wheel 0..3 (FL, FR, RL, RR) in km/h: inner wheels slower in a bend."""
        if self.speed <= 0.0:
            return 0.0
        # The wheels on the side the steering wheel points to run on the inner, shorter arc.
        inner = 1.0 if wheel % 2 == (0 if self.steering > 0 else 1) else -1.0
        speed = self.speed - inner * math.radians(abs(self.yaw_rate)) * _HALF_TRACK
        speed *= 1.0 + self._tyre_radius_error[wheel]
        return max(0.0, speed * 3.6 + self.noise.gauss(0.0, 0.02))

    def module_voltage(self, module: int) -> float:
        """Voltage of module 0..7 (12 cells in series)."""
        return self.pack_voltage / _MODULES * (1.0 + self._module_voltage_error[module])

    def module_temperature(self, module: int) -> float:
        """Temperature of module 0..7."""
        return self.pack_temperature + self._module_temperature_offset[module]

    def cell_voltage(self, highest: bool) -> float:
        """The lowest or highest cell voltage of the pack."""
        cell = self.pack_voltage / _CELLS
        return cell + 0.006 if highest else cell - 0.008 - 0.0002 * abs(self.current)

    def cell_temperature(self, highest: bool) -> float:
        """The lowest or highest cell temperature of the pack."""
        offsets = self._module_temperature_offset
        return self.pack_temperature + (max(offsets) + 0.5 if highest else min(offsets) - 0.5)

    def indicator_lamp(self, side: int) -> bool:
        """Whether the turn lamps of ``side`` (1 left, -1 right) are lit in the 1.5 Hz flash."""
        return self._segment.indicator == side and self.time % 0.667 < 0.333

    def measured_engine_speed(self) -> float:
        """Engine speed as the crank sensor reports it (a few rpm of jitter while turning)."""
        if self.engine_speed == 0.0:
            return 0.0
        return self.engine_speed + self.noise.gauss(0.0, 2.5)

    @property
    def throttle(self) -> float:
        """Throttle opening: follows the pedal; closed on overrun, slightly open at idle."""
        if not self.engine_running:
            return 0.0
        if self.pedal > 0.5:
            return 3.5 + 0.93 * self.pedal
        return 0.0 if self.torque < 0 else 3.5

    @property
    def shifting(self) -> bool:
        """True during an automatic gear change (the gearbox controls engine torque)."""
        return self.time < self.shift_until

    def tracked(self, slot: int, quantity: str) -> float:
        """One quantity of the ``slot``-th nearest tracked object, 0 when the slot is empty."""
        if slot >= len(self.visible):
            return 0.0
        obj = self.visible[slot]
        if quantity == "distance":
            return obj.distance + self.noise.gauss(0.0, 0.02)
        if quantity == "lateral":
            return obj.lateral + self.noise.gauss(0.0, 0.02)
        if quantity == "speed":
            return obj.speed - self.speed
        return float(obj.kind)

    def tyre_pressure(self, wheel: int) -> float:
        """Tyre pressure in bar: the cold pressure, corrected for the air temperature."""
        kelvin = self.tyre_temperature[wheel] + 273.15
        return self._tyre_cold_pressure[wheel] * kelvin / (self._ambient_base + 273.15)


_Getter = Callable[[_DriveModel], float]


def _demo_signals() -> dict[str, _Getter]:
    """The demo car's signals by name, each read from the drive model."""
    signals: dict[str, _Getter] = {
        "ECM_EngineSpeed": lambda m: m.measured_engine_speed(),
        "ECM_EngineTorque": lambda m: m.torque,
        "ECM_AccelPedalPos": lambda m: m.pedal,
        "ECM_ThrottlePos": lambda m: m.throttle,
        "ECM_EngineRunning": lambda m: float(m.engine_running),
        "EPS_SteeringWheelAngle": lambda m: m.steering,
        "EPS_SteeringWheelRate": lambda m: m.steering_rate,
        "EPS_AngleValid": lambda m: 1.0,
        "ESC_VehicleSpeed": lambda m: m.speed * 3.6,
        "ESC_LongAccel": lambda m: m.accel + m.noise.gauss(0.0, 0.02),
        "ESC_YawRate": lambda m: m.yaw_rate + m.noise.gauss(0.0, 0.03),
        "ESC_BrakePressure": lambda m: m.brake,
        "ESC_BrakePedalPressed": lambda m: float(m.brake > 1.0),
        "ESC_ABSActive": lambda m: 0.0,
        "ESC_ParkingBrake": lambda m: float(m.parking_brake),
        "TCM_GearLever": lambda m: float(m.lever),
        "TCM_CurrentGear": lambda m: float(m.gear),
        "TCM_OilTemp": lambda m: m.transmission_oil,
        "TCM_ConverterLocked": lambda m: float(m.converter_locked),
        "BMS_PackVoltage": lambda m: m.pack_voltage + m.noise.gauss(0.0, 0.02),
        "BMS_PackCurrent": lambda m: m.current + m.noise.gauss(0.0, 0.15),
        "BMS_SOC": lambda m: m.soc,
        "BMS_ContactorsClosed": lambda m: float(m.battery_ready),
        "BMS_State": lambda m: 2.0 if m.battery_ready else 1.0,
        "BMS_CellTempMin": lambda m: m.cell_temperature(highest=False),
        "BMS_CellTempMax": lambda m: m.cell_temperature(highest=True),
        "BMS_CoolantInletTemp": lambda m: m.battery_coolant,
        "BMS_CellVoltageMin": lambda m: m.cell_voltage(highest=False),
        "BMS_CellVoltageMax": lambda m: m.cell_voltage(highest=True),
        "ADAS_ObjectCount": lambda m: float(len(m.visible)),
        "ECM_CoolantTemp": lambda m: m.coolant,
        "ECM_OilTemp": lambda m: m.engine_oil,
        "ECM_IntakeAirTemp": lambda m: m.intake_air,
        "BCM_TurnIndicatorLeft": lambda m: float(m.indicator_lamp(1)),
        "BCM_TurnIndicatorRight": lambda m: float(m.indicator_lamp(-1)),
        "BCM_LowBeam": lambda m: float(m.low_beam),
        "BCM_DriverDoorOpen": lambda m: float(m.time < 2.5),
        "BCM_AmbientTemp": lambda m: round(m.ambient, 1),  # the BCM filters and rounds
        "GNSS_Latitude": lambda m: m.latitude,
        "GNSS_Longitude": lambda m: m.longitude,
        "IC_Odometer": lambda m: m.odometer,
        "IC_FuelLevel": lambda m: m.fuel,
        "EEC1_EngineTorqueMode": lambda m: 6.0 if m.shifting else 1.0 if m.pedal > 0.5 else 0.0,
        "EEC1_DriverDemandTorque": lambda m: 100.0 * m.demand_torque / _REFERENCE_TORQUE,
        "EEC1_ActualEngineTorque": lambda m: 100.0 * m.torque / _REFERENCE_TORQUE,
        "EEC1_EngineSpeed": lambda m: m.measured_engine_speed(),
        "EEC1_SourceAddress": lambda m: 3.0 if m.shifting else 0.0,  # 0x03 = transmission
    }

    def wheel(i: int) -> _Getter:
        return lambda m: m.wheel_speed(i)

    def module_voltage(i: int) -> _Getter:
        return lambda m: m.module_voltage(i)

    def module_temperature(i: int) -> _Getter:
        return lambda m: m.module_temperature(i)

    def tracked(slot: int, quantity: str) -> _Getter:
        return lambda m: m.tracked(slot, quantity)

    def tyre(i: int, pressure: bool) -> _Getter:
        if pressure:
            return lambda m: m.tyre_pressure(i)
        return lambda m: m.tyre_temperature[i]

    for i, position in enumerate(("FL", "FR", "RL", "RR")):
        signals[f"ABS_WheelSpeed{position}"] = wheel(i)
        signals[f"TPMS_Pressure{position}"] = tyre(i, pressure=True)
        signals[f"TPMS_Temp{position}"] = tyre(i, pressure=False)
    for i in range(_MODULES):
        signals[f"BMS_Module{i + 1}Voltage"] = module_voltage(i)
        signals[f"BMS_Module{i + 1}Temp"] = module_temperature(i)
    for slot in range(3):
        for suffix, quantity in (
            ("DistLong", "distance"),
            ("DistLat", "lateral"),
            ("RelSpeed", "speed"),
            ("Class", "class"),
        ):
            signals[f"ADAS_Obj{slot + 1}_{suffix}"] = tracked(slot, quantity)
    return signals


_DEMO_SIGNALS = _demo_signals()

# --------------------------------------------------------------------------------------------
# From values to encodable raw values


def _float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _float32_inside(bound: float, toward: float) -> float:
    """The float32 nearest to ``bound`` that does not lie beyond it, seen from ``toward``."""
    result = _float32(bound)
    if toward <= bound < result or result < bound <= toward:
        ulp = 2.0 ** (math.frexp(result)[1] - 24)
        result = _float32(result - ulp if toward < bound else result + ulp)
    return result


def _bit_range(signal: Signal) -> tuple[int, int]:
    """The raw integers an integer signal's bits can hold."""
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


@dataclass(frozen=True)
class _RawRange:
    """How a physical value becomes a raw value of one signal that strict encoding accepts."""

    scale: float
    offset: float
    is_float: bool
    float32: bool
    low: float  # lowest acceptable raw value
    high: float  # highest acceptable raw value

    @classmethod
    def of(cls, signal: Signal) -> _RawRange | None:
        """The signal's range, or None if no raw value is both representable and inside it."""
        conversion = signal.conversion
        scale, offset = float(conversion.scale), float(conversion.offset)
        if scale == 0.0:
            return None
        if conversion.is_float:
            default = 1e3 if signal.length == 32 else 1e6
            low = (signal.minimum if signal.minimum is not None else -default) - offset
            high = (signal.maximum if signal.maximum is not None else default) - offset
            low, high = sorted((low / scale, high / scale))
            if signal.length == 32:
                low, high = _float32_inside(low, high), _float32_inside(high, low)
            return cls(scale, offset, True, signal.length == 32, low, high) if low <= high else None
        low, high = _bit_range(signal)
        bounds = [(v - offset) / scale for v in (signal.minimum, signal.maximum) if v is not None]
        if signal.minimum is not None and signal.maximum is not None:
            low = max(low, math.ceil(min(bounds) - 1e-7))
            high = min(high, math.floor(max(bounds) + 1e-7))
        elif bounds:
            lower_bound = (signal.minimum is not None) == (scale > 0)
            if lower_bound:
                low = max(low, math.ceil(bounds[0] - 1e-7))
            else:
                high = min(high, math.floor(bounds[0] + 1e-7))
        return cls(scale, offset, False, False, low, high) if low <= high else None

    def clamp(self, raw: float) -> _Raw:
        """``raw`` rounded as the signal stores it and limited to the range."""
        raw = min(max(raw, self.low), self.high)
        if self.is_float:
            return _float32(raw) if self.float32 else raw
        return round(raw)

    def from_physical(self, value: float) -> _Raw:
        """The raw value that encodes the physical ``value`` (clamped to the range)."""
        return self.clamp((value - self.offset) / self.scale)


# --------------------------------------------------------------------------------------------
# Signal sources for any database

_COUNTER_NAME = re.compile(r"counter|alive|rolling|(?:^|_)(?:cnt|ctr)(?:_|\d|$)", re.IGNORECASE)
_CHECKSUM_NAME = re.compile(r"checksum|chksum|crc|(?:^|_)cs(?:_|\d|$)", re.IGNORECASE)


class _Counter:
    """A rolling counter: +1 per frame, wrapping inside the signal's range."""

    def __init__(self, low: int, high: int, start: int) -> None:
        self._low, self._span = low, high - low + 1
        self._value = start - low

    def __call__(self) -> _Raw:
        value = self._low + self._value
        self._value = (self._value + 1) % self._span
        return value


class _Choice:
    """A state-like signal (flag or enumeration) that now and then switches to another value."""

    def __init__(
        self, rng: random.Random, options: Sequence[int], switch_probability: float
    ) -> None:
        self._rng, self._options, self._p = rng, options, switch_probability
        self._value = rng.choice(options)

    def __call__(self) -> _Raw:
        if len(self._options) > 1 and self._rng.random() < self._p:
            self._value = self._rng.choice(self._options)
        return self._value


class _RandomWalk:
    """A smooth random walk inside the signal's range that moves only on some frames."""

    def __init__(self, rng: random.Random, raw_range: _RawRange) -> None:
        self._rng, self._range = rng, raw_range
        span = raw_range.high - raw_range.low
        self._value = raw_range.low + span * rng.uniform(0.25, 0.75)
        self._velocity = 0.0
        self._sigma = span * rng.uniform(0.0005, 0.005)
        self._p = rng.choice((0.02, 0.1, 0.4))  # how often this signal moves at all

    def __call__(self) -> _Raw:
        r = self._range
        if self._rng.random() < self._p:
            self._velocity = 0.9 * self._velocity + self._rng.gauss(0.0, self._sigma)
            self._value += self._velocity
            if not r.low <= self._value <= r.high:
                self._velocity = -self._velocity
                self._value = min(max(self._value, r.low), r.high)
        return r.clamp(self._value)


def _generic_source(signal: Signal, raw_range: _RawRange, rng: random.Random) -> _Source:
    """A plausible source for a signal the drive model does not know."""
    if not raw_range.is_float:
        low, high = int(raw_range.low), int(raw_range.high)
        if _COUNTER_NAME.search(signal.name) and high > low:
            return _Counter(low, high, rng.randint(low, high))
        choices = [int(v) for v in (signal.choices or {}) if low <= int(v) <= high]
        if choices:
            return _Choice(rng, choices, 0.002)
        if high - low <= 1:
            return _Choice(rng, [low, high], 0.002)
    return _RandomWalk(rng, raw_range)


def _model_source(getter: _Getter, model: _DriveModel, raw_range: _RawRange) -> _Source:
    return lambda: raw_range.from_physical(getter(model))


def _checksum_byte(signal: Signal, raw_range: _RawRange | None) -> int | None:
    """Byte index of an 8-bit, byte-aligned checksum signal, else None."""
    if raw_range is None or not _CHECKSUM_NAME.search(signal.name) or signal.length != 8:
        return None
    if raw_range.is_float or raw_range.scale != 1 or raw_range.offset != 0:
        return None
    if raw_range.low > 0 or raw_range.high < 255:
        return None
    aligned = signal.start % 8 == (0 if signal.byte_order == "little_endian" else 7)
    return signal.start // 8 if aligned else None


# --------------------------------------------------------------------------------------------
# Messages


def _branches(tree: Sequence[object]) -> list[tuple[dict[str, int], list[str]]]:
    """Every combination of multiplexer values in a cantools signal tree.

    Each entry is (multiplexer name -> value, names of the other signals present).
    """
    result: list[tuple[dict[str, int], list[str]]] = [({}, [])]
    for node in tree:
        if isinstance(node, str):
            result = [(mux, [*names, node]) for mux, names in result]
            continue
        assert isinstance(node, dict)
        options: list[tuple[dict[str, int], list[str]]] = []
        for selector, children in node.items():
            for value, subtree in children.items():
                for mux, names in _branches(subtree):
                    options.append(({selector: value, **mux}, names))
        result = [({**m1, **m2}, [*n1, *n2]) for m1, n1 in result for m2, n2 in options]
    return result


@dataclass
class _Branch:
    """One multiplexer combination of a message and the bytes it encoded last."""

    names: tuple[str, ...]
    sources: tuple[_Source, ...]
    checksum_byte: int | None
    last_values: tuple[_Raw, ...] | None = None
    last_data: bytes = b""


class _Channel:
    """One periodic message: its schedule, its signal sources and its last payloads."""

    def __init__(self, message: Message, branches: list[_Branch], rng: random.Random) -> None:
        self.message = message
        self.period = (message.cycle_time or 0) / 1000.0 or _DEFAULT_CYCLE_TIME
        self.nominal = rng.uniform(0.0, self.period)  # jitter-free send time of the next frame
        self.is_fd = bool(message.is_fd)
        self.bitrate_switch = self.is_fd and _bitrate_switch(message)
        self._padding = message.protocol == "j1939"  # J1939 fills unused bits with 1s
        self._branches = branches
        self._next_branch = 0

    def payload(self) -> bytes:
        """The next frame's data (the previous bytes again when no value changed)."""
        branch = self._branches[self._next_branch]
        self._next_branch = (self._next_branch + 1) % len(self._branches)
        values = tuple(source() for source in branch.sources)
        if values == branch.last_values:
            return branch.last_data
        data = self.message.encode(
            dict(zip(branch.names, values, strict=True)),
            scaling=False,
            padding=self._padding,
            strict=True,
        )
        if branch.checksum_byte is not None:
            patched = bytearray(data)
            i = branch.checksum_byte
            patched[i] = ((sum(patched) - patched[i]) & 0xFF) ^ 0xFF
            data = bytes(patched)
        branch.last_values, branch.last_data = values, data
        return data


def _bitrate_switch(message: Message) -> bool:
    """The DBC's CANFD_BRS attribute for ``message`` (true when the DBC does not say)."""
    dbc = message.dbc
    if dbc is None:
        return True
    attribute = dbc.attributes.get("CANFD_BRS")
    if attribute is not None:
        return str(attribute.value) == "1"
    definition = dbc.attribute_definitions.get("CANFD_BRS")
    if definition is not None and definition.default_value is not None:
        return str(definition.default_value) == "1"
    return True


class VehicleSimulator:
    """A simulated car that produces the frames of a CAN database over simulated time.

    ``database`` defaults to the demo car (:data:`DEMO_DBC`). Signals of the demo car follow a
    drive model; any other signal follows a random walk in its range. Messages that cannot be
    encoded (containers, overlapping signals in a database loaded with ``strict=False``, a
    signal whose range admits no raw value) are skipped and listed in :attr:`skipped`.

    The same ``seed`` gives the same frames. Timestamps are ``start_time`` plus simulated seconds;
    frames carry ``channel`` when given.
    """

    def __init__(
        self,
        database: Database | None = None,
        *,
        seed: int = 0,
        start_time: float = 0.0,
        channel: str | None = None,
    ) -> None:
        if database is None:
            database = Database(strict=True)
            database.add_dbc_file(DEMO_DBC)
        self._start = start_time
        self._elapsed = 0.0
        self._channel = channel
        rng = random.Random(f"signals:{seed}")
        self._jitter = random.Random(f"jitter:{seed}")
        names = {s.name for m in database.messages for s in m.signals}
        self._model = _DriveModel(seed) if names & _DEMO_SIGNALS.keys() else None
        self._queue: list[tuple[float, int, _Channel]] = []
        skipped: list[str] = []
        for index, message in enumerate(database.messages):
            channel_ = self._build_channel(message, rng)
            if channel_ is None:
                skipped.append(message.name)
            else:
                self._queue.append((channel_.nominal, index, channel_))
        heapq.heapify(self._queue)
        self._skipped = tuple(skipped)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Names of the database's messages this simulator cannot produce."""
        return self._skipped

    def diagnostic_values(self) -> dict[str, float]:
        """What the engine ECU reports over OBD-II (:func:`simulated_ecus`): the drive's engine
        speed (rpm), vehicle speed (km/h), coolant temperature and throttle (%)."""
        model = self._model
        if model is None:
            return {}
        return {
            "engine_speed": model.engine_speed,
            "speed": model.speed * 3.6,
            "coolant": model.coolant,
            "throttle": model.throttle,
        }

    @property
    def time(self) -> float:
        """Timestamp at which the next call of :meth:`frames` starts."""
        return self._start + self._elapsed

    def _build_channel(self, message: Message, rng: random.Random) -> _Channel | None:
        if message.is_container or not _signals_fit(message):
            return None
        ranges = {s.name: _RawRange.of(s) for s in message.signals}
        sources: dict[str, _Source] = {}
        for signal in message.signals:
            raw_range = ranges[signal.name]
            if raw_range is None:
                continue
            getter = _DEMO_SIGNALS.get(signal.name)
            if getter is not None and self._model is not None:
                sources[signal.name] = _model_source(getter, self._model, raw_range)
            else:
                sources[signal.name] = _generic_source(signal, raw_range, rng)
        branches: list[_Branch] = []
        for mux, names in _branches(message.signal_tree):
            if not all(
                _mux_value_ok(message.get_signal_by_name(k), v, ranges[k]) for k, v in mux.items()
            ):
                continue
            if not all(name in sources for name in names):
                continue
            checksums = [_checksum_byte(message.get_signal_by_name(n), ranges[n]) for n in names]
            branches.append(
                _Branch(
                    names=(*mux, *names),
                    sources=(*(_constant(v) for v in mux.values()), *(sources[n] for n in names)),
                    checksum_byte=next((c for c in checksums if c is not None), None),
                )
            )
        return _Channel(message, branches, rng) if branches else None

    def frames(self, duration: float) -> Iterator[can.Message]:
        """Frames of ``duration`` seconds of driving, in timestamp order.

        Timestamps are ``start_time`` plus simulated seconds; a further call continues the same
        drive where the previous one ended.
        """
        end = self._elapsed + duration
        queue = self._queue
        model = self._model
        jitter = self._jitter
        while queue and queue[0][0] < end:
            due, index, channel = queue[0]
            if model is not None:
                model.advance_to(due)
            message = channel.message
            frame = can.Message(
                timestamp=self._start + due,
                arbitration_id=message.frame_id,
                is_extended_id=message.is_extended_frame,
                is_fd=channel.is_fd,
                bitrate_switch=channel.bitrate_switch,
                data=channel.payload(),
                channel=self._channel,
            )
            channel.nominal += channel.period
            spread = _JITTER * channel.period
            offset = min(max(jitter.gauss(0.0, spread), -3 * spread), 3 * spread)
            heapq.heapreplace(queue, (max(due, channel.nominal + offset), index, channel))
            self._elapsed = due
            yield frame
        self._elapsed = end


def _signals_fit(message: Message) -> bool:
    """Whether the signals fit the message without overlapping (cantools' strict check).

    Databases loaded with ``strict=False`` may break this, and such messages cannot be encoded.
    """
    try:
        copy.deepcopy(message).refresh(strict=True)
    except CantoolsError:
        return False
    return True


def _constant(value: int) -> _Source:
    return lambda: value


def _mux_value_ok(signal: Signal, value: int, raw_range: _RawRange | None) -> bool:
    """Whether strict encoding accepts ``value`` for the multiplexer ``signal``."""
    if signal.choices and value in signal.choices:
        low, high = _bit_range(signal)
        return low <= value <= high
    return raw_range is not None and raw_range.low <= value <= raw_range.high


def run_simulation(
    bus: can.BusABC,
    simulator: VehicleSimulator,
    duration: float,
    speed: float | None = 1.0,
    stop: threading.Event | None = None,
) -> int:
    """Send ``duration`` simulated seconds of frames on ``bus``; return how many were sent.

    Frames are paced at ``speed`` times real time against :func:`time.monotonic` (each frame
    waits for its own due time, so delays do not add up); ``speed=None`` sends as fast as
    possible. Each frame keeps its simulated timestamp, which python-can's virtual bus passes on
    with ``preserve_timestamps=True``. Setting ``stop`` ends the run early. A full transmit
    queue (SocketCAN answers ENOBUFS when sending faster than the bus drains) is waited out;
    other errors of ``bus.send`` propagate.
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be positive or None, got {speed}")
    origin = simulator.time
    started = time.monotonic()
    sent = 0
    for frame in simulator.frames(duration):
        if stop is not None and stop.is_set():
            break
        if speed is not None:
            delay = started + (frame.timestamp - origin) / speed - time.monotonic()
            if delay > 0:
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    break
        _send(bus, frame, stop)
        sent += 1
    return sent


def _send(bus: can.BusABC, frame: can.Message, stop: threading.Event | None) -> None:
    for attempt in range(1000):
        try:
            bus.send(frame)
            return
        except can.CanOperationError as exc:
            if exc.error_code != errno.ENOBUFS or (stop is not None and stop.is_set()):
                raise
            time.sleep(min(0.0005 * (attempt + 1), 0.01))
    bus.send(frame)


def simulated_ecus(bus: can.BusABC, simulator: VehicleSimulator | None = None) -> SimulatedEcus:
    """The demo vehicle's diagnostic ECUs (:class:`edge.simulator.ecus.SimulatedEcus`: OBD-II,
    UDS, J1939 DM1) answering on ``bus``, their OBD-II values following ``simulator``'s drive
    and every frame they send stamped with its clock (:attr:`VehicleSimulator.time`: on
    python-can's virtual bus, open ``bus`` with ``preserve_timestamps=True`` for the stamps to
    arrive). Start it (or use it as a context manager); runtime modules never import it."""
    from edge.simulator.ecus import SimulatedEcus

    if simulator is None:
        return SimulatedEcus(bus)
    return SimulatedEcus(bus, values=simulator.diagnostic_values, clock=lambda: simulator.time)
