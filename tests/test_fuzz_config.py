"""Property-based fuzzing of daemon config files (TOML, node/config.py).

A config file is user input read before anything starts: whatever it holds, loading it gives
a valid :class:`NodeConfig` or a :class:`ConfigError` naming the key (the CLI prints one
line and exits 1), never a traceback from deep inside start-up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from hypothesis import given, strategies as st

from node.config import ConfigError, NodeConfig, build_config, parse_address, parse_size

KEYS = [f.name for f in dataclasses.fields(NodeConfig)]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                            "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)          # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


plausible_strings = st.sampled_from([
    "127.0.0.1:0", "0.0.0.0:7946", "[::1]:7000", "host", "h:99999", "h:²", ":", "", "a:1",
    "512MiB", "4GiB", "1" * 400, "0", "-1", "1.5 kb", "ideal", "rram", "nonsense",
    "stun:127.0.0.1:3478", "turn:u:p@127.0.0.1:3478?transport=tcp", "turn:bad", "~/x"])
scalars = (st.text(max_size=20) | plausible_strings | st.integers(-2**63, 2**63 - 1)
           | st.integers(-3, 100) | st.floats() | st.booleans())
toml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=2),
                           max_leaves=6)
documents = st.dictionaries(st.sampled_from(KEYS) | st.sampled_from(["memory-limit", "junk"])
                            | st.text(max_size=8), toml_values, max_size=6)


def load(tmp_path, text: str):
    path = tmp_path / "sedma.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return build_config(str(path), {})


@given(documents)
def test_any_toml_document_gives_a_valid_config_or_a_config_error(tmp_path_factory, doc):
    text = "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items())
    try:
        cfg = load(tmp_path_factory.mktemp("cfg"), text)
    except ConfigError as exc:
        assert str(exc)
        return
    # accepted: every value has its documented type and passes validation
    assert isinstance(cfg.listen, str) and parse_address(cfg.listen)
    assert all(isinstance(b, str) for b in cfg.bootstrap + cfg.stun + cfg.turn + cfg.advertise)
    assert isinstance(cfg.memory_limit, int) and cfg.memory_limit > 0
    assert isinstance(cfg.workers, int) and not isinstance(cfg.workers, bool)
    assert isinstance(cfg.name, str) and isinstance(cfg.data_dir, str)
    assert isinstance(cfg.shutdown_grace, float) and 0 <= cfg.shutdown_grace < math.inf
    assert cfg.capacity is None or (isinstance(cfg.capacity, float) and 0 < cfg.capacity < math.inf)
    for name in ("job_retention", "memory_save_every"):   # seconds the daemon sleeps on
        if hasattr(cfg, name):
            assert 0 < getattr(cfg, name) < math.inf, (name, getattr(cfg, name))


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_gives_a_config_or_a_config_error(tmp_path_factory, text):
    try:
        load(tmp_path_factory.mktemp("cfg"), text)
    except ConfigError:
        pass


@given(st.text(max_size=40) | st.from_regex(r"\s*\d{1,400}(\.\d{1,3})?\s*[kmgtKMGT]?i?[bB]?\s*",
                                            fullmatch=True))
def test_sizes_parse_or_raise_config_error(text):
    try:
        size = parse_size(text)
    except ConfigError:
        return
    assert isinstance(size, int) and size >= 0


@given(st.text(max_size=30))
def test_addresses_parse_or_raise_config_error(text):
    try:
        host, port = parse_address(text)
    except ConfigError:
        return
    assert host and 0 <= port < 65536


def test_regression_values_of_the_wrong_type_name_their_key(tmp_path):
    """Found by fuzzing: these raised TypeError/AttributeError/OverflowError, not ConfigError,
    or were accepted (a NaN capacity, an infinite shutdown grace)."""
    for text in ['name = 5', 'listen = 5', 'bootstrap = [1]', 'workers = "x"',
                 'capacity = "x"', 'stun = [5]', 'data_dir = 5', 'shutdown_grace = "x"',
                 'workers = true', f'memory_limit = "{"1" * 400}"', 'capacity = nan',
                 'shutdown_grace = inf', 'shutdown_grace = -1', 'memory_save_every = nan',
                 'job_retention = nan', 'job_retention = inf']:
        try:
            load(tmp_path, text)
        except ConfigError as exc:
            assert text.split()[0] in str(exc) or "size" in str(exc), (text, exc)
        else:
            raise AssertionError(f"{text!r} was accepted")


def test_regression_a_non_ascii_digit_port_is_not_an_address():
    """Found by fuzzing: '²'.isdigit() is true but int('²') raises ValueError."""
    try:
        parse_address("host:²")
    except ConfigError:
        pass
    else:
        raise AssertionError("accepted a superscript port")
