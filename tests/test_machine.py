"""The machine tags a trial carries: read from /proc/cpuinfo's text, so two machines can be told apart."""

from __future__ import annotations

from rayexp.machine import machine_tags, parse_cpuinfo

SAPPHIRE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
bogomips\t: 4000.00

processor\t: 1
model name\t: a second socket would not be read
flags\t\t: fpu
"""
SKYLAKE = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: fpu avx2 avx512f avx512bw\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 svebf16 i8mm\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"


def test_cpuinfo_names_the_model_and_its_bf16_instructions():
    assert parse_cpuinfo(SAPPHIRE) == ("Intel(R) Xeon(R) Platinum 8480+", ["avx512_bf16", "amx_bf16", "amx_tile"])
    assert parse_cpuinfo(SKYLAKE) == ("Intel(R) Xeon(R) Gold 6148", [])
    assert parse_cpuinfo(GRAVITON3) == ("implementer 0x41 part 0xd40", ["bf16", "svebf16"])  # ARM: Features
    assert parse_cpuinfo("") == ("", None)  # no instructions listed: unknown, not "none"


def test_tags_tell_a_bf16_machine_from_one_without(tmp_path):
    (tmp_path / "a").write_text(SAPPHIRE)
    (tmp_path / "b").write_text(SKYLAKE)
    a, b = machine_tags(cpuinfo=tmp_path / "a"), machine_tags(cpuinfo=tmp_path / "b")
    assert a["rayexp.cpu_bf16"] == "avx512_bf16,amx_bf16,amx_tile" and b["rayexp.cpu_bf16"] == "none"
    assert a["rayexp.cpu"] != b["rayexp.cpu"]
    assert a["rayexp.torch"] == b["rayexp.torch"] != "none"  # the version installed here
    assert "rayexp.gpu_name" not in a  # a CPU trial names no GPU


def test_an_unreadable_cpuinfo_says_unknown_not_none(tmp_path):
    tags = machine_tags(cpuinfo=tmp_path / "missing")
    assert tags["rayexp.cpu_bf16"] == "unknown" and tags["rayexp.cpu"]
