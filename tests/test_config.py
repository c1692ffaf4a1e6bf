"""Daemon configuration: sizes, addresses, the TOML file and its precedence."""

import pytest

from node.config import ConfigError, build_config, parse_address, parse_size


@pytest.mark.parametrize("text,expected", [
    ("512MiB", 512 << 20), ("4GiB", 4 << 30), ("1000000", 10**6), ("2 gb", 2 * 10**9), (7, 7)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GiB", "4 parsecs", ""])
def test_bad_sizes_name_the_value(bad):
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(bad)


def test_addresses():
    assert parse_address("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("example.org") == ("example.org", 7946)
    with pytest.raises(ConfigError):
        parse_address("host:99999")


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path):
    f = tmp_path / "sedma.toml"
    f.write_text('listen = "0.0.0.0:9000"\nmemory_limit = "1GiB"\nbootstrap = "a:1"\n'
                 'device = "rram"\nopen = true\n')
    cfg = build_config(str(f), {"device": "pcm", "listen": None})
    assert cfg.listen == "0.0.0.0:9000"          # file
    assert cfg.memory_limit == 1 << 30           # file, parsed
    assert cfg.bootstrap == ["a:1"]              # a single string becomes a list
    assert cfg.device == "pcm"                   # flag wins


def test_unknown_keys_and_broken_files_are_clear_errors(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("listne = 'x'\n")
    with pytest.raises(ConfigError, match="unknown key 'listne'"):
        build_config(str(f), {})
    f.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(str(f), {})
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(str(tmp_path / "missing.toml"), {})
    with pytest.raises(ConfigError, match="TURN URL"):
        build_config(None, {"turn": ["turn:nopass@host"]})
