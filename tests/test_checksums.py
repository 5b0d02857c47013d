"""Content checksums: a pretrain cache entry or a policy checkpoint whose bytes changed after it was
written is found on read, reported by path in one line, and rebuilt (cache) or refused (policy),
never used. Tiny models: each test takes a second or two."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.processes import mess3
from models.checkpoint import CorruptCheckpoint, checksum_path, load_checkpoint, save_checkpoint
from models.pretrain import PretrainConfig, pretrain
from models.transformer import Transformer, TransformerConfig
from rayexp.artifacts import TrialArtifacts
from rayexp.cache import PretrainCache
from rayexp.storage import CorruptFile, Storage

TINY = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=3)
WEIGHT = "blocks.0.mlp.fc_in.weight"  # (32, 16) float32: 2 KiB stored uncompressed in the zip
KEY = "k" * 24


def build(out: Path) -> None:
    """What the pretrain stage writes into a cache entry (rayexp/stages.py), at toy size."""
    cfg = PretrainConfig(steps=4, batch_size=8, eval_every=2, checkpoint_steps=[0, 4], num_threads=1,
                         progress=False, optimal_loss_samples=200, seed=0)  # fmt: skip
    result = pretrain(mess3(0.05, 0.85), TINY, cfg, out_dir=out / "checkpoints")
    (out / "checkpoints" / "final.pt").unlink()  # as the stage does: model.pt is the final model
    save_checkpoint(out / "model.pt", result.model, extra={"pretrain_key": KEY})
    (out / "history.json").write_text(json.dumps(result.history))
    (out / "meta.json").write_text(json.dumps({"key": KEY}))


def noise_in_weight_matrix(path: Path, seed: int = 0) -> None:
    """Overwrite the middle half of WEIGHT's bytes inside the checkpoint file with random bytes."""
    data = bytearray(path.read_bytes())
    raw = torch.load(path, weights_only=True)["state_dict"][WEIGHT].numpy().tobytes()
    at = bytes(data).find(raw)
    assert at > 0, "the weight matrix is stored uncompressed in the zip"
    lo, hi = at + len(raw) // 4, at + 3 * len(raw) // 4
    data[lo:hi] = np.random.default_rng(seed).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_line_naming(err: BaseException, path) -> bool:
    return str(path) in str(err) and "\n" not in str(err)


# ------------------------------------------------------------------------------------ checkpoints


def test_a_checkpoint_carries_a_sha256sum_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", Transformer(TINY, seed=0))
    assert checksum_path(path).read_text().split() == [
        subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0],
        "m.pt",
    ]
    subprocess.run(["sha256sum", "-c", "m.pt.sha256"], cwd=tmp_path, capture_output=True, check=True)
    assert same_weights(load_checkpoint(path)[0], Transformer(TINY, seed=0))


def test_noise_in_a_weight_matrix_loads_silently_without_the_checksum_and_is_refused_with_it(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", Transformer(TINY, seed=0))
    noise_in_weight_matrix(path)
    changed = torch.load(path, weights_only=True)["state_dict"][WEIGHT]  # torch itself notices nothing
    assert not torch.equal(changed, Transformer(TINY, seed=0).state_dict()[WEIGHT])
    with pytest.raises(CorruptCheckpoint, match="corrupt checkpoint") as err:
        load_checkpoint(path)
    assert one_line_naming(err.value, path)


def test_a_truncated_checkpoint_names_its_file_with_or_without_a_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", Transformer(TINY, seed=0))
    truncate(path)
    with pytest.raises(CorruptCheckpoint) as err:
        load_checkpoint(path)
    assert one_line_naming(err.value, path)
    checksum_path(path).unlink()  # a checkpoint from before checksums: torch's zip error, file named
    with pytest.raises(CorruptCheckpoint, match="not a readable checkpoint") as err:
        load_checkpoint(path)
    assert one_line_naming(err.value, path)


# ------------------------------------------------------------------------------------ pretrain cache


def entry(root: Path) -> Path:
    return root / "pretrain_cache" / KEY


def get(root: Path, tmp_path: Path, builds: list) -> tuple[Path, bool]:
    def counted(out: Path) -> None:
        builds.append(out)
        build(out)

    scratch = tmp_path / f"scratch{len(builds)}"
    scratch.mkdir(exist_ok=True)
    return PretrainCache(str(root)).get_or_create(KEY, counted, scratch)


def test_a_cache_entry_has_a_checksum_for_every_file_and_an_intact_one_is_a_hit(tmp_path):
    root, builds = tmp_path / "store", []
    assert get(root, tmp_path, builds)[1] is False
    files = {p.relative_to(entry(root)).as_posix() for p in entry(root).rglob("*") if p.is_file()}
    data = {f for f in files if not f.endswith(".sha256")} - {"DONE"}
    assert data == {
        "model.pt",
        "history.json",
        "meta.json",
        "checkpoints/step_0000000.pt",
        "checkpoints/step_0000004.pt",
    }
    assert files == data | {f"{f}.sha256" for f in data} | {"DONE"}  # final.pt's local sidecar is not stored
    assert get(root, tmp_path, builds)[1] is True and len(builds) == 1


@pytest.mark.parametrize("damage", ["noise", "truncate"])
def test_a_damaged_cached_model_is_reported_by_path_moved_aside_and_rebuilt(tmp_path, caplog, damage):
    root, builds = tmp_path / "store", []
    get(root, tmp_path, builds)
    model = entry(root) / "model.pt"
    original = load_checkpoint(model)[0]
    (noise_in_weight_matrix if damage == "noise" else truncate)(model)
    with caplog.at_level(logging.WARNING, logger="rayexp.cache"):
        local, hit = get(root, tmp_path, builds)
    assert hit is False and len(builds) == 2  # a miss: pretrained again
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "rayexp.cache"]
    assert str(model) in warning and "sha256" in warning and "\n" not in warning
    aside = [p for p in entry(root).parent.iterdir() if p.name.startswith(f"{KEY}.corrupt-")]
    assert len(aside) == 1 and str(aside[0]) in warning and not (aside[0] / "DONE").exists()
    assert same_weights(load_checkpoint(local / "model.pt")[0], original)  # the rebuilt entry, intact
    assert get(root, tmp_path, builds)[1] is True and len(builds) == 2  # and the retry reuses it


def test_a_damaged_checkpoint_or_history_or_a_lost_checkpoint_is_a_miss(tmp_path):
    root, builds = tmp_path / "store", []
    get(root, tmp_path, builds)
    damages = [
        lambda e: (e / "history.json").write_text("[]"),  # the stale-history case, made explicit
        lambda e: truncate(e / "checkpoints" / "step_0000004.pt"),
        lambda e: (e / "checkpoints" / "step_0000000.pt").unlink(),
    ]
    for i, damage in enumerate(damages):
        damage(entry(root))
        assert get(root, tmp_path, builds)[1] is False and len(builds) == i + 2


def test_an_entry_written_before_checksums_is_rebuilt_not_trusted(tmp_path, caplog):
    root, builds = tmp_path / "store", []
    get(root, tmp_path, builds)
    for side in entry(root).rglob("*.sha256"):
        side.unlink()
    with caplog.at_level(logging.WARNING, logger="rayexp.cache"):
        assert get(root, tmp_path, builds)[1] is False
    assert f"{entry(root)}: written before checksums existed" in caplog.text


def test_a_cached_model_damaged_after_the_pretrain_stage_fails_the_reader_and_is_not_reused(tmp_path):
    root, builds = tmp_path / "store", []
    get(root, tmp_path, builds)
    art = TrialArtifacts(str(root), "sw", "t1")
    art.write_meta({"seed": 0}, KEY, {}, {})
    truncate(entry(root) / "model.pt")
    with pytest.raises(CorruptCheckpoint) as err:
        art.model_before()
    assert one_line_naming(err.value, entry(root) / "model.pt")
    assert not (entry(root) / "DONE").exists()  # moved aside: the next trial pretrains it again
    assert get(root, tmp_path, builds)[1] is False


# ------------------------------------------------------------------------------------ policies


def test_a_corrupt_policy_checkpoint_fails_with_one_line_naming_it(tmp_path):
    art = TrialArtifacts(str(tmp_path / "store"), "sw", "t1")
    art.put_policy(save_checkpoint(tmp_path / "p.pt", Transformer(TINY, seed=1)), 3)
    stored = tmp_path / "store" / "sw" / "trials" / "t1" / "ppo" / "policy_000003.pt"
    assert checksum_path(stored).exists() and same_weights(art.policy(3), Transformer(TINY, seed=1))
    noise_in_weight_matrix(stored)
    with pytest.raises(CorruptCheckpoint) as err:
        TrialArtifacts(str(tmp_path / "store"), "sw", "t1").policy(3)
    assert one_line_naming(err.value, stored)
    art.apply_retention("none")  # deleting a policy deletes its sidecar too
    assert not any((stored.parent).iterdir())


def test_a_policy_changed_between_export_and_storing_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "p.pt", Transformer(TINY, seed=1))
    truncate(path)
    with pytest.raises(CorruptFile, match="p.pt"):
        TrialArtifacts(str(tmp_path / "store"), "sw", "t1").put_policy(path, 1)


def test_remote_copies_bring_their_sidecar_and_are_verified(tmp_path):
    """A store without local paths (pyarrow's in-memory mock filesystem stands in for s3://)."""
    store = Storage("mock:///root")
    src = save_checkpoint(tmp_path / "p.pt", Transformer(TINY, seed=2))
    store.put(src, "a/p.pt", checksum=True)
    assert store.verify("a/p.pt") is None
    local = store.local_file("a/p.pt")
    assert checksum_path(local).exists() and same_weights(load_checkpoint(local)[0], Transformer(TINY, seed=2))
    with store.fs.open_output_stream(store.path("a/p.pt")) as out:
        out.write(src.read_bytes()[:100])
    assert "does not match" in store.verify("a/p.pt") and store.path("a/p.pt") in store.verify("a/p.pt")
