"""The machine tags a trial carries: read from /proc/cpuinfo's text, so two machines can be told apart."""

from __future__ import annotations

from rayexp.machine import machine_tags, parse_cpuinfo, summary

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


def test_a_report_says_which_machines_its_trials_come_from_and_warns_when_several():
    here = {"rayexp.pretrain_cpu": "AMD EPYC", "rayexp.pretrain_cpu_bf16": "avx512_bf16",
            "rayexp.pretrain_precision": "bf16", "rayexp.cpu": "AMD EPYC", "rayexp.torch": "2.13.0+cpu"}  # fmt: skip
    one = summary([here, dict(here)])
    assert one == [
        (
            "machine: 2 trials pretrained on AMD EPYC, bf16 instructions avx512_bf16, precision bf16, ran on AMD EPYC, "
            "torch 2.13.0+cpu"
        )
    ]
    # a run stored before the tags, pooled with one after: two settings, and the warning first
    old = {"rayexp.pretrain_precision": "fp32"}
    lines = summary([here, old, here])
    assert lines[0].startswith("warning: these trials come from 2 machine settings")
    assert lines[1].startswith("machine: 2 trials pretrained on AMD EPYC")
    assert lines[2] == (
        "machine: 1 trial pretrained on not recorded, bf16 instructions not recorded, precision fp32, ran on not "
        "recorded, torch not recorded"
    )
    assert summary([]) == []
