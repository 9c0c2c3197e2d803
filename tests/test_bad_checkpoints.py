"""Bad checkpoint files: corrupt bytes found by the checksum saved in each checkpoint, a
``last_checkpoint`` of binary garbage, and files that are not checkpoints given as MODEL.WEIGHTS
(docs/reliability.md, "Bad input")."""

import re

import pytest
import torch
from PIL import Image
from torch import nn

from cascade_zoo.engine.checkpoint import (
    CorruptCheckpointError,
    NotACheckpointError,
    ZooCheckpointer,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.cls = nn.Linear(8, 3)


def _saved(directory, iterations=(1, 3)):
    """Checkpoints of iterations 1 and 3, whose ``body.weight`` is filled with the iteration."""
    ck = ZooCheckpointer(_Net(), str(directory))
    for it in iterations:
        with torch.no_grad():
            ck.model.body.weight.fill_(float(it))
        ck.save(f"model_{it:07d}", iteration=it)
    return ck


def _flip_16_bytes_of_the_weights(path, value):
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.full((8, 4), value).numpy().tobytes())
    assert at > 0, "the weights' bytes were not found in the file"
    raw[at : at + 16] = bytes(b ^ 0xFF for b in raw[at : at + 16])
    path.write_bytes(bytes(raw))


def test_checkpoint_with_flipped_bytes_is_reported_and_the_previous_one_used(tmp_path, caplog):
    _saved(tmp_path)
    last = tmp_path / "model_0000003.pth"
    _flip_16_bytes_of_the_weights(last, 3.0)
    torch.load(last, weights_only=True)  # torch reads it without a word: only the checksum tells
    model = _Net()
    ck = ZooCheckpointer(model, str(tmp_path))
    loaded = ck.resume_or_load("", resume=True)
    assert loaded["iteration"] == 1 and ck.resumed_from == str(tmp_path / "model_0000001.pth")
    assert torch.all(model.body.weight == 1.0)
    assert f"Checkpoint '{last}' is corrupt: its 'model' entry does not match the checksum" in (
        caplog.text
    )
    # the same file as MODEL.WEIGHTS: an error naming it
    expected = rf"'{re.escape(str(last))}' is corrupt: its 'model' entry"
    with pytest.raises(CorruptCheckpointError, match=expected):
        ZooCheckpointer(_Net()).load(str(last))


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    ck = _saved(tmp_path, iterations=(3,))
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert sorted(saved["checksum"]) == ["iteration", "model"]
    # an older checkpoint (no checksum), and one from which a tool removed an entry
    old = {k: v for k, v in saved.items() if k != "checksum"}
    torch.save(old, tmp_path / "old.pth")
    del saved["iteration"]
    torch.save(saved, tmp_path / "stripped.pth")
    for name in ("old.pth", "stripped.pth"):
        net = _Net()
        ZooCheckpointer(net).load(str(tmp_path / name))
        assert torch.equal(net.body.weight, ck.model.body.weight), name


def test_binary_garbage_in_last_checkpoint_is_reported_and_the_newest_checkpoint_used(
    tmp_path, caplog
):
    _saved(tmp_path)
    (tmp_path / "last_checkpoint").write_bytes(bytes(range(128, 256)) * 4)
    model = _Net()
    ck = ZooCheckpointer(model, str(tmp_path))
    loaded = ck.resume_or_load("", resume=True)
    assert loaded["iteration"] == 3 and torch.all(model.body.weight == 3.0)
    assert f"'{tmp_path / 'last_checkpoint'}' does not hold a checkpoint file name" in caplog.text


@pytest.mark.parametrize("kind", ["jpeg", "empty", "directory"])
def test_weights_that_are_not_a_checkpoint_say_what_the_file_is(tmp_path, kind):
    if kind == "jpeg":
        path = tmp_path / "weights.jpg"
        Image.new("RGB", (8, 8)).save(path)
        expected = rf"'{re.escape(str(path))}' is not a checkpoint: it is a JPEG image"
    elif kind == "empty":
        path = tmp_path / "weights.pth"
        path.write_bytes(b"")
        expected = rf"Checkpoint file '{re.escape(str(path))}' is empty \(0 bytes\)"
    else:
        path = tmp_path / "weights"
        _saved(path, iterations=(1,))
        expected = rf"'{re.escape(str(path))}' \(MODEL.WEIGHTS or --resume\) is a directory, "
        expected += r"not a file: it holds model_0000001\.pth"
    error = IsADirectoryError if kind == "directory" else NotACheckpointError
    with pytest.raises(error, match=expected):
        ZooCheckpointer(_Net()).resume_or_load(str(path), resume=False)
