"""Device profiles: what a simulated RRAM/PCM crossbar array looks like and how it misbehaves.

A profile is plain, frozen, typed data so that it can be gossiped between nodes
(``to_dict``/``from_dict`` are msgpack-able) and so that two nodes that hold the
same profile and the same seed program bit-identical states.

Units: conductances are in microsiemens (uS). Array currents inside the engine
are normalised to ``Gmax * V_read``; that makes the ADC range a pure number
("how many fully-on devices driven at full input the converter can count").

Every number in the named presets carries a comment with its source. Where a
value is our own design choice rather than a published measurement, the comment
says so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MAPPINGS = ("differential", "offset")
IR_DROP_MODES = ("fast", "circuit")
DRIFT_MODELS = ("none", "fixed", "pcm")
READ_NOISE_MODELS = ("device", "pcm")
ADC_CALIBRATIONS = ("fixed", "calibrated")

#: Bytes per resident device: one uint8 conductance code per device (see
#: ``compute.crossbar``), so 2 bytes/weight for differential pairs.
DEVICE_CODE_BYTES = 1
#: ``ideal`` keeps the float32 weights themselves so it reproduces float32 matmul.
IDEAL_BYTES = 4
SCALE_BYTES = 4
#: float32 values kept per tile besides the IR-drop factors: digital scale,
#: calibrated ADC range, drift-compensation factor.
TILE_FLOATS = 3
#: Fast IR-drop factors (one per word line and bit line per tile) are float16:
#: they sit within a few % of 1, where float16 resolves 0.05 %.
IR_FACTOR_BYTES = 2


@dataclass(frozen=True)
class DeviceProfile:
    """One crossbar technology: geometry, conductance window and non-idealities.

    Why these fields: they are the minimum set that the issue asks to model
    (quantised levels, state-dependent programming noise, read noise, stuck-at
    faults, DAC/ADC, IR drop, drift). A value of 0 switches a non-ideality off.
    """

    name: str
    rows: int  # physical array word lines (inputs per tile)
    cols: int  # physical array bit lines
    g_min_us: float = 0.0
    g_max_us: float = 1.0
    level_bits: int = 0  # 0 = analog (no level quantisation)
    mapping: str = "differential"  # differential pair G+ - G-, or offset (G - Gmid)
    # Programming noise sigma in uS as a polynomial of g = G/Gmax (ascending
    # coefficients), i.e. state dependent; times prog_noise_scale (for sweeps).
    prog_noise_poly_us: tuple[float, ...] = ()
    prog_noise_scale: float = 1.0
    read_noise_us: float = 0.0  # "device" model: additive per device, fresh per read
    # "device": N(0, read_noise_us) per device per read (RRAM short-term noise);
    # "pcm": aihwkit's accumulated 1/f noise, drawn once for the inference time.
    read_noise_model: str = "device"
    stuck_at_gmin_rate: float = 0.0
    stuck_at_gmax_rate: float = 0.0
    dac_bits: int = 0  # 0 = ideal inputs
    dac_input_range: float | None = None  # None = per-vector abs-max scaling
    adc_bits: int = 0  # 0 = ideal outputs
    adc_range: float = 0.0  # "fixed": full scale in units of Gmax*V_read
    # "calibrated": per-tile full scale = adc_headroom x the largest output rms
    # the tile gives for uniform [0, 1] inputs (computed once when programming).
    adc_calibration: str = "fixed"
    adc_headroom: float = 3.0
    bound_management: bool = False  # re-read a saturated output at 1/2, 1/4, ... input
    out_noise: float = 0.0  # Gaussian output noise per read, units of Gmax*V_read
    wire_ohm_per_cell: float = 0.0  # IR drop: wire resistance per cell segment
    ir_drop_mode: str = "fast"  # "fast": calibrated per-tile factors; "circuit": solve per read
    drift_model: str = "none"  # "fixed": every device drifts with drift_nu; "pcm": aihwkit nu(g)
    drift_nu: float = 0.0  # G(t) = G(t0) * ((t + t0)/t0)^-nu  ("fixed" model)
    drift_t0_s: float = 1.0
    read_time_s: float = 1.0  # inference time: seconds after programming completes
    drift_compensation: bool = False  # global drift compensation from a calibration read
    clip_sigma: float = 0.0  # clip weights at clip_sigma * std per tile when mapping (0 = abs-max)
    fault_aware: bool = False  # verify read + repair via differential partner and spares
    spare_cols: int = 0  # device columns per array held back as spares (fault-aware mapping)
    notes: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived geometry -------------------------------------------------
    @property
    def devices_per_weight(self) -> int:
        """Differential pairs use two devices (two bit lines) per weight."""
        return 2 if self.mapping == "differential" else 1

    @property
    def tile_inputs(self) -> int:
        """Columns of W (inputs) one array covers: one word line each."""
        return self.rows

    @property
    def tile_outputs(self) -> int:
        """Rows of W (outputs) one array covers: non-spare cols / devices per weight."""
        return (self.cols - self.spare_cols) // self.devices_per_weight

    @property
    def is_ideal(self) -> bool:
        """True when every non-ideality is off: then we store float32 exactly."""
        return (
            self.level_bits == 0
            and self.prog_noise_scale * sum(abs(c) for c in self.prog_noise_poly_us) == 0
            and self.read_noise_us == 0
            and self.read_noise_model == "device"
            and self.out_noise == 0
            and self.clip_sigma == 0
            and self.stuck_at_gmin_rate == 0
            and self.stuck_at_gmax_rate == 0
            and self.dac_bits == 0
            and self.adc_bits == 0
            and self.wire_ohm_per_cell == 0
            and self.drift_model == "none"
        )

    def tile_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Number of (tile rows, tile cols) a (M, K) matrix needs."""
        m, k = shape
        return -(-m // self.tile_outputs), -(-k // self.tile_inputs)

    def resident_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes a programmed (M, K) matrix will hold, known before programming.

        ``ideal``: 4 bytes/weight (float32 copy, needed for exact float32
        results). Otherwise one uint8 code per device (2 bytes/weight for
        differential pairs) + a few float32 per tile (scale, ADC range, drift
        compensation, and with IR drop in fast mode one factor per word line
        and bit line). Fault maps are not resident: they are regenerated from
        the seed on demand (``ProgrammedMatrix.fault_masks``).
        """
        m, k = (int(shape[0]), int(shape[1]))
        if m < 0 or k < 0:
            raise ValueError(f"shape must be non-negative, got {shape}")
        if self.is_ideal:
            return IDEAL_BYTES * m * k
        tr, tc = self.tile_grid((m, k))
        return DEVICE_CODE_BYTES * self.devices_per_weight * m * k + tr * tc * self.tile_bytes

    @property
    def tile_bytes(self) -> int:
        """Bytes held per tile: float32 scale, ADC range, drift factor; float16 fast IR-drop factors."""
        ir = IR_FACTOR_BYTES * (self.rows + self.cols) if self.wire_ohm_per_cell > 0 and self.ir_drop_mode == "fast" else 0
        return SCALE_BYTES * TILE_FLOATS + ir

    # -- serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        """Plain msgpack-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["prog_noise_poly_us"] = list(self.prog_noise_poly_us)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceProfile":
        """Build and validate; raises ValueError with the offending field."""
        if not isinstance(d, dict):
            raise ValueError(f"device profile must be a dict, got {type(d).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown device profile field(s): {', '.join(unknown)}")
        for req in ("name", "rows", "cols"):
            if req not in d:
                raise ValueError(f"device profile is missing required field '{req}'")
        kw = dict(d)
        if "prog_noise_poly_us" in kw:
            poly = kw["prog_noise_poly_us"]
            if not isinstance(poly, (list, tuple)):
                raise ValueError("prog_noise_poly_us must be a list of numbers")
            kw["prog_noise_poly_us"] = tuple(poly)
        try:
            return cls(**kw)
        except TypeError as exc:  # wrong kinds of values
            raise ValueError(f"invalid device profile: {exc}") from exc

    def summary(self) -> dict:
        """Short advert for gossip / `sedma devices`."""
        return {
            "name": self.name,
            "array": f"{self.rows}x{self.cols}",
            "mapping": self.mapping,
            "g_range_us": [self.g_min_us, self.g_max_us],
            "level_bits": self.level_bits,
            "dac_bits": self.dac_bits,
            "adc_bits": self.adc_bits,
            "ideal": self.is_ideal,
            "bytes_per_weight": IDEAL_BYTES if self.is_ideal else DEVICE_CODE_BYTES * self.devices_per_weight,
            "fault_aware": self.fault_aware,
            "row_granularity": self.tile_outputs,
        }

    def with_changes(self, **changes: Any) -> "DeviceProfile":
        """A modified copy (validated) — handy for sweeps in tests and benches."""
        return dataclasses.replace(self, **changes)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(p: DeviceProfile) -> None:
    """Reject nonsense early, with a message that names the field."""
    _check(isinstance(p.name, str) and p.name != "", "name must be a non-empty string")
    for f in ("rows", "cols"):
        v = getattr(p, f)
        _check(_is_int(v) and 1 <= v <= 65536, f"{f} must be an int in [1, 65536], got {v!r}")
    _check(p.mapping in MAPPINGS, f"mapping must be one of {MAPPINGS}, got {p.mapping!r}")
    _check(p.cols % (2 if p.mapping == "differential" else 1) == 0,
           "differential mapping needs an even number of cols")
    for f, allowed in (("ir_drop_mode", IR_DROP_MODES), ("drift_model", DRIFT_MODELS),
                       ("read_noise_model", READ_NOISE_MODELS), ("adc_calibration", ADC_CALIBRATIONS)):
        _check(getattr(p, f) in allowed, f"{f} must be one of {allowed}, got {getattr(p, f)!r}")
    _check(_is_int(p.spare_cols) and 0 <= p.spare_cols < p.cols, f"spare_cols must be an int in [0, cols), got {p.spare_cols!r}")
    _check(p.spare_cols % p.devices_per_weight == 0, "spare_cols must be a multiple of the devices per weight")
    _check(p.tile_outputs >= 1, "spare_cols leaves no output columns")
    for f in ("fault_aware", "bound_management", "drift_compensation"):
        _check(isinstance(getattr(p, f), bool), f"{f} must be a bool")
    floats = ("g_min_us", "g_max_us", "prog_noise_scale", "read_noise_us", "stuck_at_gmin_rate",
              "stuck_at_gmax_rate", "adc_range", "wire_ohm_per_cell", "drift_nu", "drift_t0_s",
              "read_time_s", "out_noise", "adc_headroom", "clip_sigma")
    for f in floats:
        v = getattr(p, f)
        _check(_is_num(v) and v >= 0, f"{f} must be a finite number >= 0, got {v!r}")
    _check(p.g_max_us > 0 and p.g_min_us < p.g_max_us,
           f"need 0 <= g_min_us < g_max_us, got {p.g_min_us}, {p.g_max_us}")
    _check(p.drift_t0_s > 0, "drift_t0_s must be > 0")
    _check(p.stuck_at_gmin_rate + p.stuck_at_gmax_rate <= 1, "stuck-at rates sum above 1")
    for f, hi in (("level_bits", 16), ("dac_bits", 16), ("adc_bits", 16)):
        v = getattr(p, f)
        _check(_is_int(v) and 0 <= v <= hi, f"{f} must be an int in [0, {hi}], got {v!r}")
    _check(p.level_bits != 1, "level_bits must be 0 (analog) or >= 2")
    _check(p.dac_bits != 1 and p.adc_bits != 1, "signed DAC/ADC need >= 2 bits (or 0 = ideal)")
    _check(p.adc_bits == 0 or p.adc_calibration != "fixed" or p.adc_range > 0,
           "adc_range must be > 0 when adc_bits > 0 and the ADC range is fixed")
    _check(p.adc_calibration == "fixed" or p.adc_headroom > 0, "adc_headroom must be > 0")
    _check(p.g_max_us <= 1e6, "g_max_us must be <= 1e6")
    _check(p.dac_input_range is None or (_is_num(p.dac_input_range) and p.dac_input_range > 0),
           f"dac_input_range must be None or > 0, got {p.dac_input_range!r}")
    _check(isinstance(p.prog_noise_poly_us, tuple) and all(_is_num(c) for c in p.prog_noise_poly_us),
           "prog_noise_poly_us must be a sequence of finite numbers")
    _check(isinstance(p.notes, str), "notes must be a string")


# ---------------------------------------------------------------------------
# Presets. Sources:
# [Joshi20] V. Joshi et al., "Accurate deep neural network inference using
#     computational phase-change memory", Nat. Commun. 11, 2473 (2020), and
#     [Nanda19] S. R. Nandakumar et al., ICECS 2019 — the PCM statistical model
#     as documented by IBM aihwkit (docs/source/pcm_inference.rst).
# [Wan22] W. Wan et al., "A compute-in-memory chip based on resistive
#     random-access memory", Nature 608, 504 (2022); polynomial fits of its
#     Extended Data Fig. 3 as given in IBM aihwkit ReRamWan2022NoiseModel.
# [LeGallo23] M. Le Gallo et al., "A 64-core mixed-signal in-memory compute
#     chip based on phase-change memory", Nat. Electron. 6, 680 (2023).
# [Chen15] C.-Y. Chen et al., "RRAM defect modeling and failure analysis based
#     on March test and a novel squeeze-search scheme", IEEE Trans. Computers
#     64(1), 180 (2015): 1.75 % stuck-at-0 (HRS), 9.04 % stuck-at-1 (LRS).
# Values marked "design choice" are ours, not device measurements.
# ---------------------------------------------------------------------------

# [aihwkit-IO] IBM aihwkit ``simulator/parameters/io.py`` (IOParameters
#     defaults): output noise 0.06, 9-bit ADC (out_res 1/510), 7-bit DAC
#     (inp_res 1/126), iterative bound management, and the IR-drop wire
#     resistance of 0.35 Ohm between cells behind ``ir_drop_g_ratio``.

PRESETS: dict[str, DeviceProfile] = {
    "ideal": DeviceProfile(
        name="ideal", rows=256, cols=256, g_min_us=0.0, g_max_us=1.0,
        notes="no non-idealities; float32 weights kept exactly (4 bytes/weight)",
    ),
    "rram": DeviceProfile(
        name="rram",
        rows=256, cols=256,  # 256x256 RRAM array per core [Wan22]
        g_min_us=1.0,  # design choice: ~1 MOhm HRS (aihwkit's converter uses 0)
        g_max_us=40.0,  # gmax reference of the [Wan22] fit in aihwkit
        level_bits=4,  # design choice: 16 levels; spacing 2.6 uS ~ prog sigma [Wan22]
        mapping="differential",  # differential pair as in [Wan22] and aihwkit
        # sigma(g) in uS, 4th-order fit at t = 1 s after programming [Wan22]
        prog_noise_poly_us=(0.348, 16.030, -43.853, 45.393, -16.815),
        read_noise_us=0.4,  # "about 1 %" of gmax short-term read noise (aihwkit note on [Wan22])
        read_noise_model="device",  # fresh per device per read [Wan22 via aihwkit]
        dac_bits=7,  # 63 levels per sign = aihwkit's inp_res 1/126 [aihwkit-IO]
        adc_bits=9,  # 255 levels per sign = aihwkit's out_res 1/510 [aihwkit-IO]
        adc_calibration="calibrated",  # design choice: per-tile range from a calibration read
        adc_headroom=3.0,  # design choice: 3x the largest output rms, bound management beyond
        bound_management=True,  # aihwkit default (iterative) [aihwkit-IO]
        out_noise=0.06,  # aihwkit default output noise [aihwkit-IO]
        wire_ohm_per_cell=0.35,  # [aihwkit-IO] ir_drop_g_ratio: 0.35 Ohm between cells
        ir_drop_mode="fast",
        drift_model="none",  # [Wan22]/aihwkit: ReRAM shows no power-law drift
        read_time_s=1.0,  # matches the t = 1 s programming-noise fit [Wan22]
        notes="RRAM, NeuRRAM-like (Wan et al., Nature 2022)",
    ),
    "pcm": DeviceProfile(
        name="pcm",
        rows=256, cols=256,  # 256x256 unit-cell crossbar per core [LeGallo23]
        g_min_us=0.0,  # RESET state ~0 on the model's scale [Joshi20/aihwkit]
        g_max_us=25.0,  # g_max = 25 uS [Joshi20/aihwkit]
        level_bits=0,  # analog iterative programming [Joshi20]
        mapping="differential",  # differential pair [Joshi20]
        # sigma = 0.26348 + 1.9650 g - 1.1731 g^2 (uS, g = G/gmax) [Nanda19/Joshi20]
        prog_noise_poly_us=(0.26348, 1.9650, -1.1731),
        read_noise_model="pcm",  # 1/f noise ~ g^0.35, accumulated since programming [Joshi20/aihwkit]
        dac_bits=8,  # 8-bit inputs [LeGallo23]
        adc_bits=8,  # 8-bit outputs [LeGallo23]
        adc_calibration="calibrated",  # design choice: per-tile range from a calibration read
        adc_headroom=3.0,  # design choice
        bound_management=True,  # aihwkit default [aihwkit-IO]
        out_noise=0.06,  # aihwkit default output noise [aihwkit-IO]
        wire_ohm_per_cell=0.35,  # [aihwkit-IO]
        ir_drop_mode="fast",
        drift_model="pcm",  # per-device nu, mean and spread depend on g [Joshi20/aihwkit]
        drift_t0_s=20.0,  # t_0 = 20 s reference time of aihwkit's PCM model
        read_time_s=3600.0,  # one hour after programming (aihwkit example t_inference)
        drift_compensation=True,  # global drift compensation [Joshi20]
        notes="PCM, IBM statistical model (Joshi et al., Nat. Commun. 2020)",
    ),
    "conservative": DeviceProfile(
        name="conservative",
        rows=256, cols=256,  # [Wan22]
        g_min_us=1.0,  # design choice as in rram
        g_max_us=40.0,  # [Wan22] fit reference
        level_bits=3,  # design choice: pessimistic 8 levels
        mapping="differential",
        # sigma(g) in uS, fit at t = 2 days after programming [Wan22]
        prog_noise_poly_us=(0.782, 20.274, -43.507, 37.062, -11.934),
        read_noise_us=0.4,  # ~1 % of gmax [Wan22 via aihwkit]
        stuck_at_gmin_rate=0.0175,  # stuck-at-0 (HRS) [Chen15]
        stuck_at_gmax_rate=0.0904,  # stuck-at-1 (LRS) [Chen15]
        dac_bits=4,  # design choice: pessimistic
        adc_bits=6,  # design choice: pessimistic
        adc_calibration="calibrated",  # design choice
        adc_headroom=3.0,  # design choice
        bound_management=True,  # [aihwkit-IO]
        out_noise=0.06,  # [aihwkit-IO]
        wire_ohm_per_cell=1.0,  # design choice: pessimistic, ~3x the aihwkit value
        ir_drop_mode="fast",
        drift_model="fixed",  # design choice: PCM-like drift on top of the RRAM numbers
        drift_nu=0.1,  # upper clamp of mean PCM drift exponent [Joshi20/aihwkit]
        drift_t0_s=20.0,  # aihwkit PCM reference time
        read_time_s=86400.0,  # one day after programming
        drift_compensation=True,  # global compensation [Joshi20]; drift still costs SNR
        clip_sigma=2.5,  # design choice: clip at 2.5 sigma per tile, as aihwkit's Gaussian weight clipping
        fault_aware=True,  # verify read, repair via differential partner and spare columns
        spare_cols=32,  # design choice: 16 spare column pairs per array (112 outputs per array)
        notes="worst published numbers combined (Wan 2022 @2 days, Chen 2015 faults, PCM drift), "
              "fault-aware mapping",
    ),
}


def get_preset(name: str) -> DeviceProfile:
    """Look a preset up by name, with a helpful error for typos."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ValueError(f"unknown device preset {name!r}; known: {known}") from None
