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

#: Bytes per resident weight for non-ideal profiles: int16 fixed-point effective
#: conductance (see ``compute.crossbar``). Per-tile float32 scales come on top.
CODE_BYTES = 2
#: ``ideal`` keeps the float32 weights themselves so it reproduces float32 matmul.
IDEAL_BYTES = 4
SCALE_BYTES = 4


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
    read_noise_us: float = 0.0  # additive per device, fresh per read
    stuck_at_gmin_rate: float = 0.0
    stuck_at_gmax_rate: float = 0.0
    dac_bits: int = 0  # 0 = ideal inputs
    dac_input_range: float | None = None  # None = per-vector abs-max scaling
    adc_bits: int = 0  # 0 = ideal outputs
    adc_range: float = 0.0  # full scale in units of Gmax*V_read; saturates beyond
    wire_ohm_per_cell: float = 0.0  # IR drop: wire resistance per cell segment
    drift_nu: float = 0.0  # G(t) = G(t0) * (t/t0)^-nu
    drift_t0_s: float = 1.0
    read_time_s: float = 1.0  # default elapsed time since programming at read
    drift_compensation: bool = False  # global digital drift correction
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
        """Rows of W (outputs) one array covers: cols / devices per weight."""
        return self.cols // self.devices_per_weight

    @property
    def is_ideal(self) -> bool:
        """True when every non-ideality is off: then we store float32 exactly."""
        return (
            self.level_bits == 0
            and self.prog_noise_scale * sum(abs(c) for c in self.prog_noise_poly_us) == 0
            and self.read_noise_us == 0
            and self.stuck_at_gmin_rate == 0
            and self.stuck_at_gmax_rate == 0
            and self.dac_bits == 0
            and self.adc_bits == 0
            and self.wire_ohm_per_cell == 0
            and self.drift_nu == 0
        )

    def tile_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Number of (tile rows, tile cols) a (M, K) matrix needs."""
        m, k = shape
        return -(-m // self.tile_outputs), -(-k // self.tile_inputs)

    def resident_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes a programmed (M, K) matrix will hold, known before programming.

        ``ideal``: 4 bytes/weight (float32 copy, needed for exact float32
        results). Otherwise 2 bytes/weight (int16 codes) + one float32 scale
        per tile. Fault maps are not resident: they are regenerated from the
        seed on demand (``ProgrammedMatrix.fault_masks``).
        """
        m, k = (int(shape[0]), int(shape[1]))
        if m < 0 or k < 0:
            raise ValueError(f"shape must be non-negative, got {shape}")
        if self.is_ideal:
            return IDEAL_BYTES * m * k
        tr, tc = self.tile_grid((m, k))
        return CODE_BYTES * m * k + SCALE_BYTES * tr * tc

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
            "bytes_per_weight": IDEAL_BYTES if self.is_ideal else CODE_BYTES,
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
    floats = ("g_min_us", "g_max_us", "prog_noise_scale", "read_noise_us", "stuck_at_gmin_rate",
              "stuck_at_gmax_rate", "adc_range", "wire_ohm_per_cell", "drift_nu", "drift_t0_s",
              "read_time_s")
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
    _check(p.adc_bits == 0 or p.adc_range > 0, "adc_range must be > 0 when adc_bits > 0")
    _check(p.dac_input_range is None or (_is_num(p.dac_input_range) and p.dac_input_range > 0),
           f"dac_input_range must be None or > 0, got {p.dac_input_range!r}")
    _check(isinstance(p.prog_noise_poly_us, tuple) and all(_is_num(c) for c in p.prog_noise_poly_us),
           "prog_noise_poly_us must be a sequence of finite numbers")
    _check(isinstance(p.drift_compensation, bool), "drift_compensation must be a bool")
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

_PCM_READ_NOISE_US = 0.0088 * math.sqrt(math.log((1.0 + 250e-9) / (2 * 250e-9))) * 25.0
# = Q_s * sqrt(ln((t + t_read) / (2 t_read))) * g at t = 1 s, t_read = 250 ns,
#   Q_s = 0.0088 at g = gmax = 25 uS [Joshi20 via aihwkit docs]; ~0.84 uS.
#   Simplification: Q_s*g depends only weakly (g^0.35) on the state; we use
#   the value at gmax for every device.

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
        dac_bits=6,  # design choice (not a device measurement)
        adc_bits=8,  # design choice (not a device measurement)
        adc_range=16.0,  # design choice: saturation rare for typical inputs
        wire_ohm_per_cell=1.0,  # design choice (order of magnitude for Cu lines), not measured
        drift_nu=0.0,  # [Wan22]/aihwkit: ReRAM shows no power-law drift
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
        # sigma = 0.2635 + 1.9650 g - 1.1731 g^2 (uS, g = G/gmax) [Nanda19/Joshi20]
        prog_noise_poly_us=(0.2635, 1.9650, -1.1731),
        read_noise_us=_PCM_READ_NOISE_US,  # 1/f read noise at t = 1 s [Joshi20]
        dac_bits=8,  # 8-bit inputs [LeGallo23]
        adc_bits=8,  # 8-bit outputs [LeGallo23]
        adc_range=16.0,  # design choice: saturation rare for typical inputs
        wire_ohm_per_cell=1.0,  # design choice, not measured
        drift_nu=0.05,  # ~lower clamp of mean drift exponent 0.049 [Joshi20/aihwkit]
        drift_t0_s=20.0,  # t_c = 20 s reference time used by aihwkit's PCM model
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
        adc_range=16.0,  # design choice
        wire_ohm_per_cell=2.5,  # design choice: pessimistic, not measured
        drift_nu=0.1,  # upper clamp of mean PCM drift exponent [Joshi20/aihwkit]
        drift_t0_s=20.0,  # aihwkit PCM reference time
        read_time_s=86400.0,  # one day after programming
        drift_compensation=True,  # global compensation [Joshi20]; drift still costs SNR
        notes="worst published numbers combined (Wan 2022 @2 days, Chen 2015 faults, PCM drift)",
    ),
}


def get_preset(name: str) -> DeviceProfile:
    """Look a preset up by name, with a helpful error for typos."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ValueError(f"unknown device preset {name!r}; known: {known}") from None
