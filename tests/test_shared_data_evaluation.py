"""evaluate_bpb on a hand-computed case, plus its contract with the model."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from shared_data.evaluation import bpb_from_sums, evaluate_bpb
from shared_data.manifests import Manifest, ManifestFile
from shared_data.prepare import PreparedData
from shared_data.tokenizer import SPLIT_PATTERN, Tokenizer

# A tokenizer whose byte lengths are known by construction: the 256 single bytes plus one merge
# "ab" (2 bytes). Specials follow at 257..260; BOS = 257.
RANKS = {bytes([i]): i for i in range(256)} | {b"ab": 256}
AB, X, Y = 256, ord("x"), ord("y")


@pytest.fixture
def tokenizer():
    return Tokenizer(SPLIT_PATTERN, RANKS)


@pytest.fixture
def prepared(tmp_path, tokenizer):
    # two val documents: "abxab" -> [BOS, ab, x, ab] (4 tokens), "xy" -> [BOS, x, y] (3 tokens)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pq.write_table(pa.table({"text": ["abxab", "xy"]}), data_dir / "val.parquet")
    pq.write_table(pa.table({"text": ["unused"]}), data_dir / "train.parquet")
    manifest = Manifest(name="hand", vocab_size=tokenizer.vocab_size, files=(
        ManifestFile("train.parquet", "http://127.0.0.1/x", 0, "", "train"),
        ManifestFile("val.parquet", "http://127.0.0.1/y", 0, "", "val"),
    ))
    return PreparedData(manifest=manifest, data_dir=data_dir, train_files=[data_dir / "train.parquet"],
                        val_files=[data_dir / "val.parquet"], tokenizer_dir=tmp_path / "tok",
                        tokenizer_hash=tokenizer.content_hash)


class TableLossModel(torch.nn.Module):
    """Loss of each target is a fixed number per target token id; records what it was called with."""

    def __init__(self, vocab_size, losses, shape_2d=False):
        super().__init__()
        table = torch.full((vocab_size,), float("nan"))  # unknown targets poison the sum if scored
        for token, loss in losses.items():
            table[token] = loss
        self.register_buffer("table", table)
        self.shape_2d = shape_2d
        self.calls = []

    def forward(self, inputs, targets, reduction="mean"):
        assert reduction == "none"
        self.calls.append((inputs.clone(), targets.clone(), self.training, torch.is_grad_enabled()))
        loss = self.table[targets]
        return loss if self.shape_2d else loss.view(-1)


def test_hand_computed_bpb(prepared, tokenizer):
    assert tokenizer.encode("abxab", prepend_bos=True) == [tokenizer.bos_token_id, AB, X, AB]
    bos = tokenizer.bos_token_id
    # BOS targets get NaN: they must be excluded, not multiplied by zero
    model = TableLossModel(tokenizer.vocab_size, {AB: 0.5, X: 1.0, Y: 1.5, bos: float("nan")})
    bpb = evaluate_bpb(model, prepared, tokenizer, batch_size=1, seq_len=6, eval_tokens=6, device="cpu")
    # one row of 7 tokens, best fit: [BOS ab x ab BOS x y]; targets [ab x ab BOS x y]
    inputs, targets, training, grad = model.calls[0]
    assert inputs.tolist() == [[bos, AB, X, AB, bos, X]]
    assert targets.tolist() == [[AB, X, AB, bos, X, Y]]
    nats = 0.5 + 1.0 + 0.5 + 1.0 + 1.5  # BOS excluded
    utf8_bytes = 2 + 1 + 2 + 1 + 1  # "ab" "x" "ab" "x" "y"; BOS has 0 bytes
    assert bpb == pytest.approx(nats / (math.log(2) * utf8_bytes), rel=1e-6)
    assert bpb == pytest.approx(0.927447, abs=1e-6)  # 4.5 / (7 ln 2)
    assert len(model.calls) == 1 and not training and not grad


def test_two_d_losses_and_multiple_steps(prepared, tokenizer, capfd):
    bos = tokenizer.bos_token_id
    model = TableLossModel(tokenizer.vocab_size, {AB: 0.5, X: 1.0, Y: 1.5, bos: 3.0}, shape_2d=True)
    # eval_tokens // (batch * seq) = 3 steps, each one row of the (repeating) val pass
    bpb = evaluate_bpb(model, prepared, tokenizer, batch_size=1, seq_len=6, eval_tokens=20, device="cpu")
    assert len(model.calls) == 3
    assert bpb == pytest.approx(4.5 / (7 * math.log(2)), rel=1e-6)
    assert "exceed one pass of the hand val split" in capfd.readouterr().err  # wrapping is never silent


def test_restores_train_mode_and_uses_autocast(prepared, tokenizer, capfd):
    model = TableLossModel(tokenizer.vocab_size, {AB: 0.5, X: 1.0, Y: 1.5, tokenizer.bos_token_id: 0.0})
    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    model.train()
    evaluate_bpb(model, prepared, tokenizer, batch_size=1, seq_len=6, eval_tokens=6, device="cpu",
                 autocast=Recorder)
    assert model.training and entered == [True]
    assert "exceed" not in capfd.readouterr().err  # one row fits in one pass
    model.eval()
    evaluate_bpb(model, prepared, tokenizer, batch_size=1, seq_len=6, eval_tokens=6, device="cpu")
    assert not model.training


def test_model_returning_a_scalar_is_refused(prepared, tokenizer):
    class MeanModel(torch.nn.Module):
        def forward(self, inputs, targets, reduction="mean"):
            return torch.tensor(1.0)

    model = MeanModel().train()
    with pytest.raises(ValueError, match="one per target"):
        evaluate_bpb(model, prepared, tokenizer, batch_size=1, seq_len=6, eval_tokens=6, device="cpu")
    assert model.training  # restored even on error


def test_bpb_from_sums():
    assert bpb_from_sums(math.log(2) * 10, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bpb_from_sums(1.0, 0)
