"""checkpoint: round trip without pickle, damage detected, run folder resolution."""

from __future__ import annotations

import pytest
import torch

from imgcls.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def make() -> Checkpoint:
    torch.manual_seed(0)
    w = {"conv.weight": torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last),
         "bn.num_batches_tracked": torch.tensor(7)}
    return Checkpoint(w, {"class_names": ["a", "b"], "epoch": 3},
                      {"optim.0.exp_avg": torch.randn(5), "rng.cpu": torch.get_rng_state()},
                      {"epoch": 3, "step": 0})


def test_round_trip(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, make())
    back = load_checkpoint(p)
    assert torch.equal(back.weights["conv.weight"], make().weights["conv.weight"])
    assert back.weights["bn.num_batches_tracked"].item() == 7
    assert back.meta["class_names"] == ["a", "b"] and back.meta["format_version"] == 2
    assert back.resumable and back.train_meta["epoch"] == 3
    assert read_metadata(p)["epoch"] == 3
    light = load_checkpoint(p, train_state=False)
    assert not light.resumable and not light.train_tensors
    assert b"pickle" not in p.read_bytes()[:200]


def test_truncated_or_flipped_bytes_are_detected(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, make())
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(p)
    bad = bytearray(data)
    bad[-20] ^= 0xFF
    p.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(p)
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_resume_picks_the_most_advanced_checkpoint_not_last_by_name(tmp_path):
    from imgcls.checkpoint import epoch_path, find_resumable

    def ck(epoch, step=0):
        c = make()
        return Checkpoint(c.weights, {"epoch": epoch, "step": step}, c.train_tensors,
                          {"epoch": epoch, "step": step})

    # killed after writing epoch 3 but before `last` was re-linked to it
    save_checkpoint(epoch_path(tmp_path, 2), ck(2))
    save_checkpoint(epoch_path(tmp_path, 3), ck(3))
    save_checkpoint(tmp_path / "last.safetensors", ck(2))
    assert find_resumable(tmp_path)[1].name == "epoch_003.safetensors"
    # a Ctrl-C mid-epoch 4 is further along than any epoch file
    save_checkpoint(tmp_path / "last.safetensors", ck(3, 5))
    assert find_resumable(tmp_path)[1].name == "last.safetensors"


def test_the_checksum_covers_the_metadata(tmp_path):
    """Swapping the class names (or any metadata) in a file is caught, not believed."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load, save

    p = tmp_path / "c.safetensors"
    save_checkpoint(p, make())
    with safe_open(str(p), framework="pt") as f:
        metadata = f.metadata()
    meta = json.loads(metadata["imgcls"])
    meta["class_names"] = ["b", "a"]
    metadata["imgcls"] = json.dumps(meta)
    p.write_bytes(save(load(p.read_bytes()), metadata=metadata))  # same tensors, same sha256
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(p)


def test_pruning_keeps_the_newest_by_epoch_past_999(tmp_path):
    from imgcls.checkpoint import epoch_path
    from imgcls.train.runfolder import RunWriter

    run = tmp_path / "run"
    for epoch in (997, 998, 999, 1000, 1001):
        ck = make()
        ck.meta["epoch"] = epoch
        save_checkpoint(epoch_path(run, epoch), ck)
    RunWriter(run, keep=2).prune()
    left = sorted(read_metadata(p)["epoch"] for p in (run / "checkpoints").iterdir())
    assert left == [1000, 1001]


def test_a_file_replaced_while_it_is_read_is_whole_never_damaged(tmp_path):
    """Old main read the tensors from one read and the metadata from a second open: a run
    saving `last` between the two made an intact checkpoint look damaged (and `--init`
    hashed one read and loaded another). The bytes read are the bytes parsed."""
    a, b = make(), make()
    b.meta["epoch"] = 4
    p = tmp_path / "last.safetensors"
    save_checkpoint(p, a)
    data = p.read_bytes()
    save_checkpoint(p, b)  # replaced (atomically) after the read
    got = load_checkpoint(p, data=data)
    assert got.meta["epoch"] == 3 and torch.equal(got.weights["conv.weight"],
                                                  a.weights["conv.weight"])
    assert load_checkpoint(p).meta["epoch"] == 4


def test_best_is_written_before_the_epoch_that_earned_it_is_recorded(tmp_path):
    """Old main wrote the epoch file, then `best`: a run killed (or out of disk) between the
    two resumed past the epoch that earned `best` and never wrote it. Here the epoch file
    cannot be written (a folder stands at its path): `best` already holds the epoch."""
    from imgcls.checkpoint import epoch_path
    from imgcls.train.runfolder import RunWriter

    run = tmp_path / "run"
    epoch_path(run, 2).mkdir(parents=True)
    full, best = make(), make()
    best.meta["epoch"] = 2
    with pytest.raises(OSError):
        RunWriter(run, keep=0).end_epoch(2, full, best, [])
    assert read_metadata(run / "best.safetensors")["epoch"] == 2
    assert not (run / "last.safetensors").exists()
