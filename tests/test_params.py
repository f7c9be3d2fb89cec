"""Specification of container parameters (agent.config.params) and sample configs (agent.config.samples)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.conffile import ConfFile, ConfigError
from agent.config.params import (
    LINUX_CAPABILITIES,
    MAX_VALUE,
    PAGE_SIZE,
    UNLIMITED,
    ContainerConfig,
    NetIf,
    ParamError,
    ParamKind,
    UnknownParamError,
    apply_params,
    format_size,
    known_params,
    lookup_param,
    parse_barrier_limit,
    parse_cpu_list,
    parse_diskspace,
    parse_hostname,
    parse_name,
    parse_size,
)
from agent.config.samples import (
    SampleNotFoundError,
    available_samples,
    default_vz_conf,
    load_sample,
    sample_file_name,
    sample_text,
)

K, M, G, T, P = (1024**i for i in range(1, 6))


def one(option: str, value: str, conf: dict[str, str] | None = None) -> dict[str, str | None]:
    return apply_params(conf or {}, [(option, value)])


def refused(option: str, value: str, conf: dict[str, str] | None = None) -> ParamError:
    with pytest.raises(ParamError) as err:
        apply_params(conf or {}, [(option, value)])
    return err.value


# ---- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("0", 1, 0),
        ("512", 1, 512),
        (" 512 ", 1, 512),
        ("1B", 1, 1),
        ("1b", 1, 1),
        ("1K", 1, K),
        ("1k", 1, K),
        ("1KB", 1, K),
        ("1kb", 1, K),
        ("1KiB", 1, K),
        ("1kib", 1, K),
        ("256M", 1, 256 * M),
        ("256MiB", 1, 256 * M),
        ("3G", 1, 3 * G),
        ("3gb", 1, 3 * G),
        ("2T", 1, 2 * T),
        ("1P", 1, P),
        ("2.5G", 1, 5 * G // 2),
        ("2.2G", 1, 2362232012),  # rounded down to whole bytes
        ("0.5K", 1, 512),
        ("256", PAGE_SIZE, 256 * PAGE_SIZE),  # plain number in the default unit
        ("256M", PAGE_SIZE, 256 * M),  # a suffix means bytes
        ("1.5", M, 3 * M // 2),  # a fraction of a unit > 1 byte is fine
        ("unlimited", 1, UNLIMITED),
        ("UNLIMITED", 1, UNLIMITED),
        (str(MAX_VALUE), 1, UNLIMITED),  # what old vzctl wrote for unlimited
        (str(MAX_VALUE), PAGE_SIZE, UNLIMITED),
        ("8191P", 1, 8191 * P),
    ],
)
def test_parse_size(text: str, unit: int, expected: int | None) -> None:
    assert parse_size(text, unit) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12Q", "unknown size suffix 'Q' (use K, M, G, T or P)"),
        ("12QB", "unknown size suffix 'QB' (use K, M, G, T or P)"),
        ("1E", "unknown size suffix 'E' (use K, M, G, T or P)"),
        ("-1", "negative values are not allowed"),
        ("-1G", "negative values are not allowed"),
        ("", "empty value"),
        ("   ", "empty value"),
        ("1.5", "a fractional value needs a size suffix"),
        ("8192P", "too large (the maximum is 9223372036854775807 bytes)"),
        (str(MAX_VALUE + 1), "too large"),
        ("9" * 100, "value too long"),
        ("abc", "not a number or a size such as 512M"),
        ("1 M", "not a number or a size such as 512M"),
        ("0x10", "not a number or a size such as 512M"),
        ("1e6", "not a number or a size such as 512M"),
        ("1e", "unknown size suffix 'e'"),
        ("\u0661\u0662", "not a number"),  # non-ASCII digits
    ],
)
def test_parse_size_refuses(text: str, reason: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_size(text, option="ram")
    assert err.value.reason.startswith(reason)


def test_param_error_message_names_option_value_and_reason() -> None:
    err = refused("--ram", "12Q")
    assert str(err) == "invalid value for --ram: '12Q': unknown size suffix 'Q' (use K, M, G, T or P)"
    assert str(refused("ram", "12Q")) == str(err)  # dashes optional


def test_parse_size_can_refuse_unlimited() -> None:
    with pytest.raises(ParamError, match="'unlimited' is not allowed"):
        parse_size("unlimited", allow_unlimited=False)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (1, "1"), (1000, "1000"), (K, "1K"), (1536, "1536"), (256 * M, "256M"), (3 * G, "3G"),
     (2 * T, "2T"), (5 * P, "5P"), (1025 * K, "1025K")],
)  # fmt: skip
def test_format_size_uses_the_largest_exact_suffix(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text) == n


# ---- barrier:limit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit", "suffixes", "expected"),
    [
        ("100:200", 1, False, (100, 200)),
        ("100", 1, False, (100, 100)),  # one value sets both
        (" 100 : 200 ", 1, False, (100, 200)),
        ("unlimited", 1, False, (None, None)),
        ("0:unlimited", 1, False, (0, None)),
        ("unlimited:unlimited", 1, False, (None, None)),
        ("5:5", 1, False, (5, 5)),
        ("0:256", PAGE_SIZE, True, (0, 256 * PAGE_SIZE)),  # pages
        ("0:256M", PAGE_SIZE, True, (0, 256 * M)),  # bytes
        ("128M:256M", PAGE_SIZE, True, (128 * M, 256 * M)),
        ("14372700:14790164", 1, True, (14372700, 14790164)),
    ],
)
def test_parse_barrier_limit(
    text: str, unit: int, suffixes: bool, expected: tuple[int | None, int | None]
) -> None:
    assert parse_barrier_limit(text, unit, suffixes=suffixes) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("200:100", "barrier 200 is greater than limit 100"),
        ("unlimited:100", "barrier unlimited is greater than limit 100"),
        ("1:2:3", "expected barrier[:limit]"),
        (":", "empty value"),
        ("10:", "empty value"),
        (":10", "empty value"),
        ("10:-1", "negative values are not allowed"),
        ("10K", "a count takes no size suffix ('K')"),
        ("1.5", "must be a whole number"),
    ],
)
def test_parse_barrier_limit_refuses(text: str, reason: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_barrier_limit(text, 1, option="numproc", suffixes=False)
    assert err.value.reason == reason
    assert str(err.value).startswith(f"invalid value for --numproc: {text!r}: ")


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [
        # page-based: plain numbers are 4 KiB pages, a suffix means bytes; stored canonically
        ("--physpages", "0:256", "0:1M"),
        ("--physpages", "0:1000", "0:1000"),
        ("--physpages", "0:256M", "0:256M"),
        ("--physpages", "0:262144", "0:1G"),
        ("--physpages", "0:unlimited", "0:unlimited"),
        ("--swappages", "0:1G", "0:1G"),
        ("--privvmpages", "65536:69632", "256M:272M"),
        ("--shmpages", "21504:21504", "84M:84M"),
        ("--lockedpages", "256", "1M:1M"),
        ("--lockedpages", "unlimited", "unlimited"),
        ("--vmguarpages", "33792:unlimited", "132M:unlimited"),
        ("--privvmpages", "1000K:2000K", "250:500"),  # bytes, stored as pages
        ("--privvmpages", "1001:1000K", "1001:250"),  # barrier 1001 pages, limit 250 pages... refused below
    ][:-1],
)
def test_page_based_parameters(option: str, value: str, stored: str) -> None:
    key = lookup_param(option).conf_key
    assert key is not None
    assert one(option, value) == {key: stored}
    # and what is stored reads back to the same bytes
    back = ContainerConfig.from_conf({key: stored}, "x.conf")
    assert back.beancounters[option.lstrip("-")] == parse_barrier_limit(value, PAGE_SIZE)


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [
        ("--ram", "256M", "0:256M"),
        ("--ram", "1G", "0:1G"),
        ("--ram", "1.5G", "0:1536M"),
        ("--ram", "100000K", "0:25000"),  # not a whole MiB: stored as pages
        ("--ram", "1000", "0:1"),  # bytes, rounded up to a whole page
        ("--ram", "unlimited", "0:unlimited"),
        ("--swap", "512M", "0:512M"),
        ("--swap", "0", "0:0"),
    ],
)
def test_ram_and_swap_set_the_page_limit(option: str, value: str, stored: str) -> None:
    key = "PHYSPAGES" if option == "--ram" else "SWAPPAGES"
    assert one(option, value, {key: "0:2"}) == {key: stored}


def test_ram_of_zero_is_refused() -> None:
    assert refused("--ram", "0").reason == "RAM must be greater than 0"


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [
        ("--kmemsize", "14372700:14790164", "14372700:14790164"),
        ("--kmemsize", "1M:2M", "1M:2M"),
        ("--kmemsize", "unlimited", "unlimited"),
        ("--tcpsndbuf", "1720320:2703360", "1720320:2703360"),
        ("--dcachesize", "3409920", "3409920:3409920"),
        ("--numproc", "240:240", "240:240"),
        ("--numproc", "240", "240:240"),
        ("--numproc", "unlimited", "unlimited"),
        ("--numproc", "0:unlimited", "0:unlimited"),
        ("--numfile", "9312:9312", "9312:9312"),
        ("--numtcpsock", "360", "360:360"),
        ("--numothersock", "360:400", "360:400"),
        ("--diskinodes", "200000:220000", "200000:220000"),
        ("--diskspace", "1048576:1153024", "1G:1126M"),  # 1 KiB blocks
        ("--diskspace", "1048576:1153025", "1G:1153025"),
        ("--diskspace", "10G:11G", "10G:11G"),
        ("--diskspace", "2G:2.2G", "2G:2306868"),  # rounded up to whole blocks
        ("--diskspace", "1000", "1000:1000"),
        ("--diskspace", "unlimited", "unlimited"),
        ("--quotatime", "600", "600"),
        ("--quotaugidlimit", "100", "100"),
    ],
)
def test_byte_count_and_disk_parameters(option: str, value: str, stored: str) -> None:
    key = lookup_param(option).conf_key
    assert key is not None
    assert one(option, value) == {key: stored}


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--numproc", "10K", "a count takes no size suffix ('K')"),
        ("--numproc", "300:200", "barrier 300 is greater than limit 200"),
        ("--diskspace", "2G:1G", "barrier 2G is greater than limit 1G"),
        ("--diskinodes", "1M", "a count takes no size suffix ('M')"),
        ("--kmemsize", "-5", "negative values are not allowed"),
        ("--privvmpages", "1001:1000K", "barrier 1001 is greater than limit 1000K"),
        ("--quotatime", "-1", "must be between 0 and 2147483647"),
    ],
)
def test_limit_parameters_refuse(option: str, value: str, reason: str) -> None:
    assert refused(option, value).reason == reason


def test_parse_diskspace_returns_blocks() -> None:
    assert parse_diskspace("1G:2G") == (1048576, 2097152)
    assert parse_diskspace("100") == (100, 100)
    assert parse_diskspace("1500B") == (2, 2)  # rounded up
    assert parse_diskspace("unlimited") == (None, None)


# ---- CPU and I/O --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [
        ("--cpuunits", "8", "8"),
        ("--cpuunits", "1000", "1000"),
        ("--cpuunits", "500000", "500000"),
        ("--cpulimit", "25", "25"),
        ("--cpulimit", "25%", "25"),
        ("--cpulimit", "0", "0"),
        ("--cpulimit", "250%", "250"),  # more than one CPU: not checked against the node here
        ("--cpus", "2", "2"),
        ("--cpus", "unlimited", None),
        ("--cpus", "0", None),
        ("--cpumask", "0-3,5", "0-3,5"),
        ("--cpumask", "5,0-3", "0-3,5"),
        ("--cpumask", "0,1,2,3", "0-3"),
        ("--cpumask", "0-3,2-6,9", "0-6,9"),
        ("--cpumask", "3,3,3", "3"),
        ("--cpumask", " 1 - 2 , 4 ", "1-2,4"),
        ("--cpumask", "all", None),
        ("--nodemask", "0", "0"),
        ("--nodemask", "all", None),
        ("--ioprio", "0", "0"),
        ("--ioprio", "7", "7"),
        ("--iolimit", "10", "10M"),  # default unit MiB/s
        ("--iolimit", "10M", "10M"),
        ("--iolimit", "500K", "500K"),
        ("--iolimit", "1000B", "1000B"),
        ("--iolimit", "0", "0"),
        ("--iolimit", "unlimited", "0"),
        ("--iopslimit", "300", "300"),
    ],
)
def test_cpu_and_io_parameters(option: str, value: str, stored: str | None) -> None:
    key = lookup_param(option).conf_key
    assert key is not None
    assert one(option, value, {key: "1"}) == {key: stored}


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--cpuunits", "7", "must be between 8 and 500000"),
        ("--cpuunits", "500001", "must be between 8 and 500000"),
        ("--cpuunits", "1e3", "must be a whole number between 8 and 500000"),
        ("--cpuunits", "", "must be a whole number between 8 and 500000"),
        ("--cpulimit", "-5", "must be between 0 and 2147483647"),
        (
            "--cpulimit",
            "50m",
            "limits in MHz are not supported; give a percentage of one CPU, e.g. 50 or 50%",
        ),
        ("--cpulimit", "x%", "must be a whole number between 0 and 2147483647"),
        ("--cpulimit", "12.5", "must be a whole number between 0 and 2147483647"),
        ("--cpus", "-1", "must be between 0 and 8192"),
        ("--cpus", "two", "must be a whole number between 0 and 8192"),
        ("--cpumask", "3-1", "range 3-1 goes backwards"),
        ("--cpumask", "a", "bad list item 'a' (use e.g. 0-3,5 or all)"),
        ("--cpumask", "1,,2", "bad list item '' (use e.g. 0-3,5 or all)"),
        ("--cpumask", "8192", "8192 is above the largest possible id 8191"),
        ("--cpumask", "", "empty list (use e.g. 0-3,5 or all)"),
        ("--ioprio", "8", "must be between 0 and 7"),
        ("--iolimit", "-1", "negative values are not allowed"),
        ("--iopslimit", "-1", "must be between 0 and 2147483647"),
    ],
)
def test_cpu_and_io_parameters_refuse(option: str, value: str, reason: str) -> None:
    assert refused(option, value).reason == reason


def test_parse_cpu_list_normalises() -> None:
    assert parse_cpu_list("7,0-2,3") == "0-3,7"
    assert parse_cpu_list("ALL") is None


# ---- names, text, switches ----------------------------------------------------------------------

LONG_LABEL = "a" * 63


@pytest.mark.parametrize(
    "name",
    ["web", "web-1", "web1.example.com", "A1", "1web", "x", f"{LONG_LABEL}.{LONG_LABEL}", "xn--bcher-kva.ch",
     ".".join(["a" * 63] * 3 + ["a" * 61])],
)  # fmt: skip
def test_valid_hostnames(name: str) -> None:
    assert parse_hostname(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty hostname"),
        ("-web", "bad label '-web'"),
        ("web-", "bad label 'web-'"),
        ("web_1", "bad label 'web_1'"),
        ("web..example", "empty label in hostname"),
        ("web.", "empty label in hostname"),
        (".web", "empty label in hostname"),
        ("a" * 64, "label 'aaaaaaaaaaaaaaaaaaaa'... longer than 63 characters"),
        (".".join(["a" * 63] * 4), "hostname longer than 253 characters"),
        ("caf\u00e9", "bad label"),
        ("web 1", "bad label"),
    ],
)
def test_invalid_hostnames(name: str, reason: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_hostname(name)
    assert err.value.reason.startswith(reason)


@pytest.mark.parametrize("name", ["web", "web-1", "web_1.prod", "1web", "9" * 3 + "a", "a" * 64])
def test_valid_names(name: str) -> None:
    assert parse_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("101", "a name must not be all digits"),
        ("a" * 65, "use 1 to 64 letters"),
        ("-web", "use 1 to 64 letters"),
        (".web", "use 1 to 64 letters"),
        ("web/1", "use 1 to 64 letters"),
        ("", "use 1 to 64 letters"),
        ("w\u00e9b", "use 1 to 64 letters"),
    ],
)
def test_invalid_names(name: str, reason: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_name(name)
    assert err.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [
        ("--onboot", "yes", "yes"),
        ("--onboot", "NO", "no"),
        ("--disabled", "yes", "yes"),
        ("--bootorder", "5", "5"),
        ("--hostname", "web1.example.com", "web1.example.com"),
        ("--name", "web", "web"),
        ("--description", 'Web "front" $5 `x`', 'Web "front" $5 `x`'),
        ("--description", "caf\u00e9", "caf\u00e9"),
        ("--description", "", None),  # empty removes it
        ("--ostemplate", "debian-12-x86_64-minimal", "debian-12-x86_64-minimal"),
        ("--netfilter", "full", "full"),
        ("--netfilter", "Stateful", "stateful"),
        ("--stop-timeout", "120", "120"),
        ("--stop_timeout", "1", "1"),  # '_' and '-' are interchangeable
        ("--stop-timeout", "3600", "3600"),
    ],
)
def test_general_parameters(option: str, value: str, stored: str | None) -> None:
    key = lookup_param(option).conf_key
    assert key is not None
    assert one(option, value, {key: "old"}) == {key: stored}


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--onboot", "maybe", "must be yes or no"),
        ("--onboot", "1", "must be yes or no"),
        ("--bootorder", "-1", "must be between 0 and 2147483647"),
        ("--description", "two\nlines", "must be a single line"),
        ("--description", "bell\a", "contains control characters"),
        ("--description", "x" * 1025, "longer than 1024 characters"),
        (
            "--ostemplate",
            "../../etc/passwd",
            "use letters, digits, '.', '_', '+' or '-' (a name, not a path)",
        ),
        ("--netfilter", "on", "must be one of disabled, stateless, stateful, full"),
        ("--stop-timeout", "0", "must be between 1 and 3600"),
        ("--stop-timeout", "3601", "must be between 1 and 3600"),
    ],
)
def test_general_parameters_refuse(option: str, value: str, reason: str) -> None:
    assert refused(option, value).reason == reason


@pytest.mark.parametrize(
    ("current", "value", "stored"),
    [
        ("", "net_admin:on", "NET_ADMIN:on"),
        ("", "NET_ADMIN:ON", "NET_ADMIN:on"),
        ("", "cap_sys_time:off", "SYS_TIME:off"),
        ("SYS_TIME:on", "net_admin:on", "SYS_TIME:on NET_ADMIN:on"),
        ("SYS_TIME:on NET_ADMIN:on", "sys_time:off", "SYS_TIME:off NET_ADMIN:on"),
    ],
)
def test_capability_merges_by_name(current: str, value: str, stored: str) -> None:
    assert one("--capability", value, {"CAPABILITY": current}) == {"CAPABILITY": stored}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("net_admn:on", "unknown capability 'net_admn' (did you mean net_admin or net_raw?)"),
        ("ve_admin:on", "unknown capability 've_admin'"),
        ("net_admin", "use capability:on or capability:off"),
        ("net_admin:yes", "use capability:on or capability:off"),
    ],
)
def test_capability_refuses(value: str, reason: str) -> None:
    assert refused("--capability", value).reason.startswith(reason)


def test_capability_list_is_the_linux_one() -> None:
    assert len(LINUX_CAPABILITIES) == 41
    assert LINUX_CAPABILITIES[12] == "net_admin" and LINUX_CAPABILITIES[21] == "sys_admin"
    assert LINUX_CAPABILITIES[-1] == "checkpoint_restore"


@pytest.mark.parametrize(
    ("option", "current", "value", "stored"),
    [
        ("--features", "", "nfs:on", "nfs:on"),
        ("--features", "nfs:on", "ppp:on", "nfs:on ppp:on"),
        ("--features", "nfs:on ppp:on", "NFS:off", "nfs:off ppp:on"),
        ("--devnodes", "", "net/tun:rw", "net/tun:rw"),
        ("--devnodes", "", "/dev/fuse:wr", "fuse:rw"),
        ("--devnodes", "fuse:rw", "fuse:none", "fuse:none"),
        ("--devnodes", "fuse:rw", "net/tun:r", "fuse:rw net/tun:r"),
    ],
)
def test_features_and_devnodes_merge(option: str, current: str, value: str, stored: str) -> None:
    key = lookup_param(option).conf_key
    assert key is not None
    assert one(option, value, {key: current}) == {key: stored}


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--features", "nfz:on", "unknown feature 'nfz' (did you mean nfs?)"),
        ("--devnodes", "fuse", "use device:r|w|rw|none, e.g. net/tun:rw"),
        ("--devnodes", "../sda:rw", "bad device name '../sda'"),
        ("--devnodes", "fuse:rx", "bad permissions 'rx'"),
        ("--devnodes", "fuse:rr", "bad permissions 'rr'"),
    ],
)
def test_features_and_devnodes_refuse(option: str, value: str, reason: str) -> None:
    assert refused(option, value).reason.startswith(reason)


def test_userpasswd_is_validated_but_never_stored_nor_shown() -> None:
    assert one("--userpasswd", "root:s3cret:with:colons") == {}
    for bad in ("root", "Root:x", "root:", "root:tab\tin"):
        err = refused("--userpasswd", bad)
        assert "s3cret" not in str(err) and "tab" not in str(err)
        assert "<hidden>" in str(err)


# ---- lists: addresses, DNS, interfaces ----------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "changes", "stored"),
    [
        ("", [("--ipadd", "10.0.0.1")], "10.0.0.1"),
        ("10.0.0.1", [("--ipadd", "10.0.0.2")], "10.0.0.1 10.0.0.2"),
        ("", [("--ipadd", "10.0.0.1"), ("--ipadd", "10.0.0.2")], "10.0.0.1 10.0.0.2"),
        ("10.0.0.1", [("--ipadd", "10.0.0.1")], None),  # already there: no change, no duplicate
        ("10.0.0.1", [("--ipadd", "10.0.0.1/24")], "10.0.0.1/24"),  # same address, new prefix
        ("10.0.0.1/24", [("--ipadd", "10.0.0.1")], "10.0.0.1"),
        ("", [("--ipadd", "10.0.0.1/255.255.255.0")], "10.0.0.1/24"),
        ("", [("--ipadd", "2001:DB8::0001")], "2001:db8::1"),
        ("", [("--ipadd", "2001:db8::1/64")], "2001:db8::1/64"),
        ("", [("--ipadd", "10.0.0.1,10.0.0.2 10.0.0.3")], "10.0.0.1 10.0.0.2 10.0.0.3"),
        ("10.0.0.1 10.0.0.2", [("--ipdel", "10.0.0.1")], "10.0.0.2"),
        ("10.0.0.1/24 2001:db8::1", [("--ipdel", "10.0.0.1")], "2001:db8::1"),
        ("10.0.0.1 2001:db8::1", [("--ipdel", "2001:DB8::1/64")], "10.0.0.1"),
        ("10.0.0.1 10.0.0.2", [("--ipdel", "all")], ""),
        ("10.0.0.1", [("--ipdel", "all"), ("--ipadd", "10.0.0.9")], "10.0.0.9"),
        ("10.0.0.1", [("--ipadd", "10.0.0.9"), ("--ipdel", "all")], ""),  # command-line order
        ("10.0.0.1", [("--ipadd", "10.0.0.2"), ("--ipdel", "10.0.0.1")], "10.0.0.2"),
    ],
)
def test_ip_addresses_merge(current: str, changes: list[tuple[str, str]], stored: str | None) -> None:
    expected = {} if stored is None else {"IP_ADDRESS": stored}
    assert apply_params({"IP_ADDRESS": current}, changes) == expected


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--ipadd", "10.0.0.300", "not an IPv4 or IPv6 address (with an optional /prefix)"),
        ("--ipadd", "web", "not an IPv4 or IPv6 address (with an optional /prefix)"),
        ("--ipadd", "127.0.0.1", "a loopback address cannot be given to a container"),
        ("--ipadd", "0.0.0.0", "an unspecified address cannot be given to a container"),
        ("--ipadd", "224.0.0.1", "a multicast address cannot be given to a container"),
        ("--ipadd", "", "empty value"),
        ("--ipdel", "10.0.0.7", "the container has no such address (it has: 10.0.0.1)"),
        ("--ipdel", "bogus", "not an IPv4 or IPv6 address"),
    ],
)
def test_ip_addresses_refuse(option: str, value: str, reason: str) -> None:
    assert refused(option, value, {"IP_ADDRESS": "10.0.0.1"}).reason == reason


def test_ipdel_on_a_container_without_addresses() -> None:
    assert refused("--ipdel", "10.0.0.7").reason == "the container has no such address (it has: none)"


@pytest.mark.parametrize(
    ("current", "changes", "stored"),
    [
        ("8.8.8.8", [("--nameserver", "1.1.1.1")], "1.1.1.1"),  # first use replaces
        ("8.8.8.8", [("--nameserver", "1.1.1.1"), ("--nameserver", "9.9.9.9")], "1.1.1.1 9.9.9.9"),
        ("", [("--nameserver", "1.1.1.1"), ("--nameserver", "1.1.1.1")], "1.1.1.1"),
        ("", [("--nameserver", "2001:4860:4860::8888")], "2001:4860:4860::8888"),
        ("", [("--nameserver", "1.1.1.1 9.9.9.9")], "1.1.1.1 9.9.9.9"),
        ("8.8.8.8", [("--nameserver", "inherit")], "inherit"),
    ],
)
def test_nameservers_replace_then_append(current: str, changes: list[tuple[str, str]], stored: str) -> None:
    assert apply_params({"NAMESERVER": current}, changes) == {"NAMESERVER": stored}


def test_searchdomains_replace_then_append() -> None:
    changes = [("--searchdomain", "example.com"), ("--searchdomain", "corp.example.com")]
    assert apply_params({"SEARCHDOMAIN": "old.org"}, changes) == {
        "SEARCHDOMAIN": "example.com corp.example.com"
    }
    assert refused("--searchdomain", "bad_domain").reason.startswith("bad label 'bad_domain'")
    assert refused("--nameserver", "dns.google").reason == "not an IPv4 or IPv6 address"


@pytest.mark.parametrize(
    ("current", "changes", "stored"),
    [
        ("", [("--netif_add", "eth0")], "ifname=eth0"),
        (
            "",
            [("--netif_add", "eth0,00:18:51:aa:bb:cc,veth101.0,00:18:51:aa:bb:cd,br0")],
            "ifname=eth0,mac=00:18:51:AA:BB:CC,host_ifname=veth101.0,host_mac=00:18:51:AA:BB:CD,bridge=br0",
        ),
        ("", [("--netif_add", "eth0,,,,br0")], "ifname=eth0,bridge=br0"),
        ("ifname=eth0", [("--netif_add", "eth1")], "ifname=eth0;ifname=eth1"),
        ("ifname=eth0;ifname=eth1", [("--netif_del", "eth0")], "ifname=eth1"),
        ("ifname=eth0", [("--netif_del", "eth0")], None),
        ("ifname=eth0;ifname=eth1", [("--netif-del", "all")], None),
    ],
)
def test_netif_add_and_del(current: str, changes: list[tuple[str, str]], stored: str | None) -> None:
    assert apply_params({"NETIF": current}, changes) == {"NETIF": stored}


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--netif_add", "eth0", "interface eth0 already exists (remove it with --netif_del)"),
        ("--netif_add", "", "missing interface name"),
        ("--netif_add", "a-very-long-interface", "bad interface name 'a-very-long-interface'"),
        ("--netif_add", "eth1,01:00:5e:00:00:01", "MAC address 01:00:5e:00:00:01 is a multicast address"),
        ("--netif_add", "eth1,00-11-22-33-44-55", "bad MAC address '00-11-22-33-44-55'"),
        ("--netif_add", "eth1,,,,,extra", "use ifname[,mac,host_ifname,host_mac,bridge]"),
        ("--netif_del", "eth9", "the container has no interface 'eth9' (it has: eth0)"),
    ],
)
def test_netif_refuses(option: str, value: str, reason: str) -> None:
    assert refused(option, value, {"NETIF": "ifname=eth0"}).reason.startswith(reason)


def test_netif_round_trips_through_the_stored_form() -> None:
    netif = NetIf("eth0", "00:18:51:AA:BB:CC", "veth101.0", None, "br0")
    assert NetIf.from_conf(netif.to_conf()) == netif


# ---- options, registry, apply -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "suggestions"),
    [
        ("--rma", ("--ram",)),
        ("--ipaddr", ("--ipadd",)),
        ("--hostnme", ("--hostname",)),
        ("--cpulimt", ("--cpulimit",)),
        ("--xyzzy", ()),
    ],
)
def test_unknown_option_suggests_the_closest_names(option: str, suggestions: tuple[str, ...]) -> None:
    with pytest.raises(UnknownParamError) as err:
        apply_params({}, [(option, "1")])
    assert err.value.suggestions[: len(suggestions)] == suggestions
    assert str(err.value).startswith(f"unknown option {option} (")
    if suggestions:
        assert f"did you mean {suggestions[0]}" in str(err.value)
    assert isinstance(err.value, ParamError)


def test_unknown_option_message() -> None:
    with pytest.raises(UnknownParamError) as err:
        lookup_param("--rma")
    assert str(err.value) == "unknown option --rma (did you mean --ram?)"


def test_apply_returns_only_changed_keys_and_later_options_win() -> None:
    conf = {"HOSTNAME": "web", "PHYSPAGES": "0:256M", "ONBOOT": "no"}
    changes = [("--hostname", "web"), ("--ram", "1G"), ("--physpages", "0:2G"), ("--onboot", "yes")]
    assert apply_params(conf, changes) == {"PHYSPAGES": "0:2G", "ONBOOT": "yes"}


def test_apply_removes_keys_with_none() -> None:
    assert apply_params({"CPUS": "2", "CPUMASK": "0-1"}, [("--cpus", "unlimited"), ("--cpumask", "all")]) == {
        "CPUS": None,
        "CPUMASK": None,
    }
    assert apply_params({}, [("--cpus", "unlimited")]) == {}  # nothing to remove


def test_apply_stops_at_the_first_bad_option() -> None:
    with pytest.raises(ParamError, match="--cpuunits"):
        apply_params({}, [("--hostname", "web"), ("--cpuunits", "1"), ("--rma", "1")])


def test_apply_does_not_modify_its_input() -> None:
    conf = {"IP_ADDRESS": "10.0.0.1"}
    apply_params(conf, [("--ipadd", "10.0.0.2")])
    assert conf == {"IP_ADDRESS": "10.0.0.1"}


CLI_MD_OPTIONS = [  # the create/set options CLI.md lists
    "onboot", "bootorder", "hostname", "nameserver", "searchdomain", "userpasswd", "description",
    "name", "disabled", "ipadd", "ipdel", "netif_add", "netif_del", "ram", "swap", "physpages",
    "privvmpages", "numproc", "numfile", "numtcpsock", "numothersock", "kmemsize", "lockedpages",
    "shmpages", "cpuunits", "cpulimit", "cpus", "cpumask", "nodemask", "ioprio", "iolimit",
    "iopslimit", "diskspace", "diskinodes", "quotatime", "quotaugidlimit", "capability",
    "features", "devnodes", "netfilter", "stop-timeout",
]  # fmt: skip


@pytest.mark.parametrize("name", CLI_MD_OPTIONS)
def test_every_option_users_expect_is_known(name: str) -> None:
    assert lookup_param("--" + name).name == name


def test_registry_is_consistent() -> None:
    params = known_params()
    names = [p.name for p in params]
    assert len(names) == len(set(names))
    for p in params:
        assert p.help and p.option == "--" + p.name
        assert p.conf_key is None or p.conf_key.isupper()
        if p.kind is ParamKind.INTEGER:
            assert p.minimum is not None and p.maximum is not None
    assert lookup_param("ipadd").repeatable and not lookup_param("ram").repeatable
    assert [p.name for p in params if p.conf_key is None] == ["userpasswd"]


# ---- typed access -------------------------------------------------------------------------------

LEGACY_CONF = """\
ONBOOT="yes"
# UBC parameters (in form of barrier:limit)
KMEMSIZE="14372700:14790164"
LOCKEDPAGES="256:256"
PRIVVMPAGES="65536:69632"
NUMPROC="240:240"
PHYSPAGES="0:9223372036854775807"
VMGUARPAGES="33792:9223372036854775807"
NUMFILE="9312:9312"
# Disk quota parameters (in form of softlimit:hardlimit)
DISKSPACE="1048576:1153024"
DISKINODES="200000:220000"
QUOTATIME="0"
CPUUNITS="1000"
VE_ROOT="/var/lib/vz/root/$VEID"
VE_PRIVATE="/var/lib/vz/private/$VEID"
OSTEMPLATE="debian-4.0-i386-minimal"
ORIGIN_SAMPLE="vps.basic"
IP_ADDRESS="139.124.2.113"
NAMESERVER="139.124.2.113"
NETIF=""
HOSTNAME="web"
CAPABILITY="SYS_TIME:on"
"""


def test_container_config_from_a_legacy_openvz_conf() -> None:
    cfg = ContainerConfig.from_conf(ConfFile.parse(LEGACY_CONF, "2113.conf"), "2113.conf")
    assert cfg.onboot is True
    assert cfg.hostname == "web"
    assert cfg.ip_addresses == ("139.124.2.113",)
    assert cfg.nameservers == ("139.124.2.113",)
    assert cfg.netifs == ()
    assert cfg.ostemplate == "debian-4.0-i386-minimal"
    assert cfg.origin_sample == "vps.basic"
    assert cfg.ve_root == "/var/lib/vz/root/$VEID"
    assert cfg.ram_bytes is None  # LONG_MAX = unlimited
    assert cfg.numproc == (240, 240)
    assert cfg.beancounters["kmemsize"] == (14372700, 14790164)
    assert cfg.beancounters["privvmpages"] == (256 * M, 272 * M)
    assert cfg.beancounters["vmguarpages"] == (33792 * PAGE_SIZE, None)
    assert cfg.diskspace_bytes == (1048576 * K, 1153024 * K)
    assert cfg.diskinodes == (200000, 220000)
    assert cfg.cpuunits == 1000
    assert cfg.capabilities == {"sys_time": True}
    assert cfg.stop_timeout == 60  # default
    assert cfg.disabled is False and cfg.cpus is None and cfg.cpumask is None


def test_container_config_defaults_for_an_empty_conf() -> None:
    cfg = ContainerConfig.from_conf({}, "empty.conf")
    assert cfg == ContainerConfig()
    assert (cfg.stop_timeout, cfg.netfilter, cfg.cpulimit_percent, cfg.numproc) == (60, "stateless", 0, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'CPUUNITS="lots"',
            "key 'CPUUNITS': invalid value 'lots': must be a whole number between 8 and 500000",
        ),
        ('PHYSPAGES="0:12Q"', "key 'PHYSPAGES': invalid value '0:12Q': unknown size suffix 'Q'"),
        (
            'NUMPROC="300:200"',
            "key 'NUMPROC': invalid value '300:200': barrier 300 is greater than limit 200",
        ),
        (
            'IP_ADDRESS="10.0.0.1 nonsense"',
            "key 'IP_ADDRESS': invalid value '10.0.0.1 nonsense': not an IPv4",
        ),
        ('HOSTNAME="-bad-"', "key 'HOSTNAME': invalid value '-bad-': bad label '-bad-'"),
        ('ONBOOT="sometimes"', "key 'ONBOOT': invalid value 'sometimes': must be yes or no"),
        ('CAPABILITY="FLY:on"', "key 'CAPABILITY': invalid value 'FLY:on': unknown capability 'fly'"),
        ('NETIF="mac=00:11:22:33:44:55"', "key 'NETIF': invalid value 'mac=00:11:22:33:44:55': NETIF entry"),
        ('STOP_TIMEOUT="0"', "key 'STOP_TIMEOUT': invalid value '0': must be between 1 and 3600"),
    ],
)
def test_bad_stored_values_name_file_line_and_key(line: str, message: str) -> None:
    path = "/etc/vz/conf/101.conf"
    conf = ConfFile.parse(f'# header\nHOSTNAME="ok"\n{line}\n', path)
    with pytest.raises(ConfigError) as err:
        ContainerConfig.from_conf(conf, path)
    assert str(err.value).startswith(f"{path}:3: {message}")


def test_bad_stored_value_without_line_numbers() -> None:
    with pytest.raises(ConfigError) as err:
        ContainerConfig.from_conf({"CPUUNITS": "1"}, "/x/101.conf")
    assert str(err.value) == "/x/101.conf: key 'CPUUNITS': invalid value '1': must be between 8 and 500000"


SET_EVERYTHING = [
    ("--onboot", "yes"), ("--bootorder", "3"), ("--disabled", "no"), ("--name", "web"),
    ("--description", 'a "web" box'), ("--ostemplate", "debian-12"), ("--stop-timeout", "90"),
    ("--userpasswd", "root:x"), ("--hostname", "web.example.com"), ("--ipadd", "10.0.0.5/24"),
    ("--ipadd", "2001:db8::5"), ("--nameserver", "1.1.1.1"), ("--searchdomain", "example.com"),
    ("--netif_add", "eth0,00:18:51:00:00:01,,,br0"), ("--netfilter", "full"), ("--ram", "1G"),
    ("--swap", "100000K"), ("--privvmpages", "unlimited"), ("--kmemsize", "14372700:14790164"),
    ("--numproc", "100:200"), ("--numfile", "unlimited"), ("--diskspace", "10G:2.2T"),
    ("--diskinodes", "1000:2000"), ("--quotatime", "60"), ("--cpuunits", "2000"), ("--cpulimit", "150%"),
    ("--cpus", "2"), ("--cpumask", "1,0"), ("--nodemask", "0"), ("--ioprio", "6"), ("--iolimit", "1.5"),
    ("--iopslimit", "500"), ("--capability", "net_admin:on"), ("--features", "nfs:on"),
    ("--devnodes", "net/tun:rw"),
]  # fmt: skip


def test_everything_apply_writes_reads_back(tmp_path: Path) -> None:
    # given the basic sample; when every kind of option is applied and saved; then it reads back typed
    conf = load_sample("basic")
    conf.update_values(apply_params(conf, SET_EVERYTHING))
    conf.save(tmp_path / "101.conf")
    cfg = ContainerConfig.from_file(ConfFile.load(tmp_path / "101.conf"))
    assert (cfg.onboot, cfg.bootorder, cfg.disabled, cfg.name) == (True, 3, False, "web")
    assert (cfg.description, cfg.ostemplate, cfg.stop_timeout) == ('a "web" box', "debian-12", 90)
    assert cfg.hostname == "web.example.com"
    assert cfg.ip_addresses == ("10.0.0.5/24", "2001:db8::5")
    assert (cfg.nameservers, cfg.searchdomains) == (("1.1.1.1",), ("example.com",))
    assert cfg.netifs == (NetIf("eth0", mac="00:18:51:00:00:01", bridge="br0"),)
    assert cfg.netfilter == "full"
    assert cfg.ram_bytes == G
    assert cfg.swap_bytes == 25000 * PAGE_SIZE
    assert cfg.beancounters["privvmpages"] == (None, None)
    assert cfg.beancounters["kmemsize"] == (14372700, 14790164)
    assert cfg.numproc == (100, 200)
    assert cfg.diskspace_bytes == (10 * G, -(-22 * T // 10 // K) * K)
    assert cfg.diskinodes == (1000, 2000)
    assert (cfg.quotatime, cfg.cpuunits, cfg.cpulimit_percent, cfg.cpus) == (60, 2000, 150, 2)
    assert (cfg.cpumask, cfg.nodemask, cfg.ioprio) == ("0-1", "0", 6)
    assert (cfg.iolimit_bytes, cfg.iopslimit) == (3 * M // 2, 500)
    assert cfg.capabilities == {"net_admin": True}
    assert cfg.features == {"nfs": True}
    assert cfg.devnodes == {"net/tun": "rw"}
    assert "root:x" not in (tmp_path / "101.conf").read_text()


# ---- samples ------------------------------------------------------------------------------------


def test_builtin_samples_are_listed_and_valid() -> None:
    assert {"basic", "unlimited"} <= set(available_samples())
    for name in available_samples():
        conf = load_sample(name)
        ContainerConfig.from_conf(conf, conf.path)


def test_basic_sample_is_a_small_container() -> None:
    cfg = ContainerConfig.from_file(load_sample("basic"))
    assert (cfg.ram_bytes, cfg.swap_bytes) == (256 * M, 512 * M)
    assert cfg.numproc == (None, None)
    assert cfg.diskspace_bytes is not None and cfg.diskspace_bytes[0] == 2 * G
    assert (cfg.cpuunits, cfg.onboot, cfg.stop_timeout, cfg.netfilter) == (1000, False, 60, "stateless")


def test_unlimited_sample_has_no_limits() -> None:
    cfg = ContainerConfig.from_file(load_sample("ve-unlimited.conf-sample"))
    assert (cfg.ram_bytes, cfg.swap_bytes, cfg.diskspace_bytes) == (None, None, (None, None))
    assert all(limit is None for _, limit in cfg.beancounters.values())


def test_node_samples_come_first_and_can_be_added(tmp_path: Path) -> None:
    (tmp_path / "ve-basic.conf-sample").write_text('PHYSPAGES="0:1G"\n')
    (tmp_path / "ve-big.conf-sample").write_text('PHYSPAGES="0:8G"\n')
    (tmp_path / "101.conf").write_text("")
    assert sample_text("basic", tmp_path) == 'PHYSPAGES="0:1G"\n'
    assert sample_text("big", tmp_path) == 'PHYSPAGES="0:8G"\n'
    assert "unlimited" in sample_text("unlimited", tmp_path)  # falls back to the built-in one
    assert available_samples(tmp_path) == ["basic", "big", "unlimited"]
    assert load_sample("big", tmp_path).path == str(tmp_path / "ve-big.conf-sample")


def test_missing_sample_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(SampleNotFoundError) as err:
        sample_text("huge", tmp_path)
    assert str(err.value) == (
        f"{tmp_path}/ve-huge.conf-sample: no sample config 'huge' "
        f"(looked in {tmp_path} and the built-in samples; available: basic, unlimited)"
    )
    assert isinstance(err.value, ConfigError)
    with pytest.raises(SampleNotFoundError, match="looked in the built-in samples"):
        sample_text("huge")
    assert sample_text("basic", tmp_path / "missing-dir") == sample_text("basic")


@pytest.mark.parametrize("name", ["../../etc/passwd", "", "a/b", ".hidden"])
def test_sample_names_cannot_be_paths(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid sample name"):
        sample_text(name)


def test_sample_file_name() -> None:
    assert sample_file_name("basic") == sample_file_name("ve-basic.conf-sample") == "ve-basic.conf-sample"


def test_default_vz_conf() -> None:
    conf = ConfFile.parse(default_vz_conf(), "/etc/vz/vz.conf")
    for key in ("LOGGING", "LOGFILE", "LOG_LEVEL", "VERBOSE", "TEMPLATE", "CONFIGFILE", "DEF_OSTEMPLATE",
                "NEIGHBOUR_DEVS", "VE_STOP_TIMEOUT", "VE0CPUUNITS"):  # fmt: skip
        assert key in conf
    assert conf["CONFIGFILE"] in available_samples()
    assert conf.get_expanded("VE_ROOT", {"VEID": "101"}) == "/var/lib/vz/root/101"
    assert conf.get_expanded("VE_PRIVATE", {"VEID": "101"}) == "/var/lib/vz/private/101"
