"""Early stopping of decoder training (issue 12, item 11): hand-computed stopping epochs, the best epoch's decoders
put back, exact resume of a stopped run, clear errors for bad options."""
import math

import pytest
import torch
from torch import nn

import pcnet
from pcnet.experiments import evaluate, train
from pcnet.experiments.early_stopping import EarlyStopping
from tiny import random_images as _images
from tiny import same_state as _same
from tiny import interrupted, small_prednet
from tiny import state_copy as _copy


@pytest.fixture
def net():
    return small_prednet()


def test_stopper_hand_sequence():
    """Losses 3, 2, 2.5, 2.1, 1.9 with patience 2: epochs 3 and 4 do not improve on epoch 2, so it stops after 4."""
    module, stopper, stops = nn.Linear(1, 1), EarlyStopping(patience=2), []
    for epoch, loss in enumerate([3.0, 2.0, 2.5, 2.1], start=1):
        with torch.no_grad():
            module.weight.fill_(epoch)  # the weights "of" this epoch
        stops.append(stopper.update(loss, epoch=epoch, module=module))
    assert stops == [False, False, False, True]
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (2.0, 2, 2)
    stopper.restore(module)
    assert module.weight.item() == 2.0  # epoch 2's weights are back


def test_stopper_min_delta_and_equal_losses():
    module = nn.Linear(1, 1)
    stopper = EarlyStopping(patience=1, min_delta=0.1)
    stopper.update(1.0, epoch=1, module=module)
    assert stopper.update(0.95, epoch=2, module=module)  # 0.05 lower, below min_delta: no improvement
    stopper = EarlyStopping(patience=2)
    stopper.update(1.0, epoch=1, module=module)
    assert not stopper.update(1.0, epoch=2, module=module) and stopper.bad_epochs == 1  # equal is not better


@pytest.mark.parametrize("kwargs", [dict(patience=0), dict(patience=True), dict(patience=2.0), dict(patience="2"),
                                    dict(patience=1, min_delta=-0.1), dict(patience=1, min_delta=math.nan),
                                    dict(patience=1, min_delta=math.inf)])
def test_stopper_refuses_bad_options(kwargs):
    with pytest.raises(ValueError, match="patience must be|min_delta must be"):
        EarlyStopping(**kwargs)


def test_stopper_refuses_non_finite_loss():
    with pytest.raises(ValueError, match="epoch 3 is nan"):
        EarlyStopping(patience=1).update(math.nan, epoch=3, module=nn.Linear(1, 1))


def test_stopper_state_round_trip_and_mismatch():
    module, stopper = nn.Linear(1, 1), EarlyStopping(patience=3)
    stopper.update(1.0, epoch=1, module=module)
    other = EarlyStopping(patience=3)
    other.load_state_dict(stopper.state_dict())
    assert (other.best, other.best_epoch, other.bad_epochs) == (1.0, 1, 0) and _same(other.best_state, _copy(module))
    with pytest.raises(ValueError, match="patience=2"):
        EarlyStopping(patience=2).load_state_dict(stopper.state_dict())


def _scripted_validation(monkeypatch, totals, snapshots):
    """Replace the validation loss by the scripted per-epoch values (two layers summing to totals[k]) and record
    the decoders at each validation."""
    def fake(net, dataset, **kwargs):
        snapshots.append(_copy(net.decoders))
        total = totals[len(snapshots) - 1]
        return torch.tensor([total / 4, 3 * total / 4])  # (N,) per layer; early stopping watches the sum
    monkeypatch.setattr(evaluate, "feedback_loss_on", fake)


def test_train_feedback_stops_early_and_restores_best(net, monkeypatch):
    snapshots = []
    _scripted_validation(monkeypatch, [1.0, 0.5, 0.6, 0.7, 0.4, 0.3], snapshots)
    history = train.train_feedback(net, _images(32), epochs=6, batch_size=16, lr=1e-3, seed=0, progress=False,
                                   val_set=_images(8, seed=1), patience=2)
    assert (history["best_epoch"], history["epochs_run"]) == (2, 4)  # epochs 3, 4 no better than 2: stop
    assert len(history["epoch_loss"]) == len(history["val_loss"]) == 4 and len(snapshots) == 4
    assert _same(_copy(net.decoders), snapshots[1]) and not _same(snapshots[1], snapshots[3])
    assert not net.training


def test_train_feedback_that_keeps_improving_runs_every_epoch(net, monkeypatch):
    _scripted_validation(monkeypatch, [1.0, 0.9, 0.8], [])
    history = train.train_feedback(net, _images(32), epochs=3, batch_size=16, lr=1e-3, seed=0, progress=False,
                                   val_set=_images(8, seed=1), patience=1)
    assert (history["best_epoch"], history["epochs_run"]) == (3, 3)


def test_train_feedback_early_stopping_resumes_exactly(net, monkeypatch, tmp_path):
    totals, options = [1.0, 0.5, 0.6, 0.7, 0.4], dict(epochs=5, batch_size=16, lr=1e-3, seed=0, progress=False,
                                                      val_set=_images(8, seed=1), patience=2)
    start = _copy(net.decoders)
    _scripted_validation(monkeypatch, totals, [])
    expected = train.train_feedback(net, _images(32), **options)
    final = _copy(net.decoders)

    net.decoders.load_state_dict(start)
    _scripted_validation(monkeypatch, totals, [])
    ckpt = tmp_path / "fb.ckpt"  # 2 batches per epoch: interrupted in epoch 4, after epoch 3's validation
    interrupted(monkeypatch, lambda: train.train_feedback(net, _images(32), checkpoint=ckpt, **options),
                target=pcnet, name="feedback_step", after=7)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 3 and saved["stopper"]["best_epoch"] == 2 and saved["stopper"]["bad_epochs"] == 1
    resumed = train.train_feedback(net, _images(32), checkpoint=ckpt, **options)
    assert (resumed["best_epoch"], resumed["epochs_run"]) == (expected["best_epoch"], expected["epochs_run"]) == (2, 4)
    assert resumed["step_loss"] == expected["step_loss"] and _same(_copy(net.decoders), final)
    with pytest.raises(ValueError, match="was made with"):  # another patience does not resume this checkpoint
        train.train_feedback(net, _images(32), checkpoint=ckpt, **{**options, "patience": 3})


def test_train_feedback_patience_needs_validation_set(net):
    with pytest.raises(ValueError, match="pass val_set"):
        train.train_feedback(net, _images(32), epochs=2, batch_size=16, lr=1e-3, seed=0, progress=False, patience=1)
