"""Device profiles: presets, serialisation, validation and memory cost."""

import msgpack
import numpy as np
import pytest

from compute.crossbar import ProgrammedMatrix
from compute.device import PRESETS, DeviceProfile, get_preset

REALISTIC = [n for n in PRESETS if n != "ideal"]


def test_presets_include_ideal_and_three_realistic() -> None:
    assert "ideal" in PRESETS and PRESETS["ideal"].is_ideal
    assert {"rram", "pcm", "conservative"} <= set(PRESETS)
    for name in REALISTIC:
        assert not PRESETS[name].is_ideal, name


@pytest.mark.parametrize("name", list(PRESETS))
def test_profile_round_trips_through_msgpack(name: str) -> None:
    p = PRESETS[name]
    wire = msgpack.unpackb(msgpack.packb(p.to_dict()), raw=False)
    assert DeviceProfile.from_dict(wire) == p


def test_get_preset_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match=r"unknown device preset 'nope'; known: ideal, rram"):
        get_preset("nope")
    assert get_preset("pcm") is PRESETS["pcm"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mapping": "diagonal"}, "mapping"),
        ({"rows": 0}, "rows"),
        ({"g_min_us": 50.0}, "g_min_us < g_max_us"),
        ({"stuck_at_gmin_rate": -0.1}, "stuck_at_gmin_rate"),
        ({"adc_bits": 8, "adc_range": 0.0, "adc_calibration": "fixed"}, "adc_range"),
        ({"ir_drop_mode": "exact"}, "ir_drop_mode"),
        ({"drift_model": "linear"}, "drift_model"),
        ({"spare_cols": 3}, "spare_cols"),
        ({"spare_cols": 256}, "spare_cols"),
        ({"fault_aware": 1}, "fault_aware"),
        ({"out_noise": -0.1}, "out_noise"),
        ({"level_bits": 1}, "level_bits"),
        ({"prog_noise_poly_us": "abc"}, "prog_noise_poly_us"),
        ({"bogus": 1}, "unknown device profile field"),
    ],
)
def test_from_dict_rejects_bad_fields_with_clear_message(change: dict, message: str) -> None:
    d = PRESETS["rram"].to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=message):
        DeviceProfile.from_dict(d)


def test_from_dict_requires_name_rows_cols() -> None:
    d = PRESETS["rram"].to_dict()
    del d["cols"]
    with pytest.raises(ValueError, match="missing required field 'cols'"):
        DeviceProfile.from_dict(d)
    with pytest.raises(ValueError, match="must be a dict"):
        DeviceProfile.from_dict([1, 2])


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("shape", [(1, 1), (130, 300), (256, 512), (300, 17)])
def test_resident_bytes_predicts_programmed_size(name: str, shape: tuple[int, int]) -> None:
    p = PRESETS[name]
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    pm = ProgrammedMatrix.program(w, p, seed=1)
    assert pm.nbytes == p.resident_bytes(shape)
    per_weight = pm.nbytes / w.size
    if p.is_ideal:
        assert per_weight == 4.0
    else:
        tiles = np.prod(p.tile_grid(shape))
        ir = 2 * (p.rows + p.cols) if p.wire_ohm_per_cell > 0 and p.ir_drop_mode == "fast" else 0
        # one uint8 code per device (2 per weight) + scale, ADC range, drift factor (float32)
        # and float16 word-/bit-line IR-drop factors per tile
        assert pm.nbytes == 2 * w.size + (3 * 4 + ir) * tiles


def test_large_matrix_costs_two_bytes_per_weight_plus_small_tile_data() -> None:
    for name in ("rram", "pcm", "conservative"):
        p = PRESETS[name]
        cost = p.resident_bytes((4096, 4096))
        assert 2.0 < cost / 4096**2 < 2.04, name


def test_summary_is_short_and_plain() -> None:
    s = PRESETS["pcm"].summary()
    assert s["name"] == "pcm" and s["array"] == "256x256" and s["bytes_per_weight"] == 2
    msgpack.packb(s)
