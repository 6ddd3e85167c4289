import pytest

from corral.errors import BadLimitError
from corral.units import format_size, parse_count, parse_cpus, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("4096", 4096), ("64k", 64 << 10), (1024, 1024)],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "12X", "", "-5M", "0"])
def test_parse_size_refuses_with_a_sentence(text: str) -> None:
    with pytest.raises(BadLimitError, match=r"memory limit .* write it like 512M") as err:
        parse_size(text, what="memory limit")
    assert err.value.exit_code == 4


@pytest.mark.parametrize(
    ("text", "expected"), [("30", 30.0), ("30s", 30.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0)]
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "5 days", "0", "-1"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(BadLimitError, match="timeout"):
        parse_duration(text, what="timeout")


def test_counts_and_cpus() -> None:
    assert parse_count("256") == 256
    assert parse_cpus("0.5") == 0.5
    for bad in ("many", "0", "-3"):
        with pytest.raises(BadLimitError, match=r"whole number|more than zero"):
            parse_count(bad, what="pids limit")
    for bad in ("fast", "0", "99999"):
        with pytest.raises(BadLimitError, match="cores"):
            parse_cpus(bad)


def test_format_size_round_trips() -> None:
    for text in ("512M", "2G", "64K", "1000"):
        assert format_size(parse_size(text)) == text
