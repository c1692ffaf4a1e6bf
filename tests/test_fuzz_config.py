"""Config files (TOML): wrong types and extreme values name their key (found by fuzzing)."""

from __future__ import annotations

from node.config import ConfigError, build_config, parse_address


def load(tmp_path, text: str):
    path = tmp_path / "sedma.toml"
    path.write_text(text, encoding="utf-8")
    return build_config(str(path), {})


def test_regression_values_of_the_wrong_type_name_their_key(tmp_path):
    """Found by fuzzing: these raised TypeError/AttributeError/OverflowError, not ConfigError,
    or were accepted (a NaN capacity, an infinite shutdown grace)."""
    for text in ['name = 5', 'listen = 5', 'bootstrap = [1]', 'workers = "x"',
                 'capacity = "x"', 'stun = [5]', 'data_dir = 5', 'shutdown_grace = "x"',
                 'workers = true', f'memory_limit = "{"1" * 400}"', 'capacity = nan',
                 'shutdown_grace = inf', 'shutdown_grace = -1']:
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
