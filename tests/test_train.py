"""pcnet.experiments.train on small real data: loss goes down, exact resume, frozen backbone in feedback training."""
import math

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import pcnet
import pcnet.experiments.data as data
from pcnet.experiments import evaluate, models, train
from fashion import needs_fashion
from tiny import interrupted




@pytest.fixture(scope="module")
def fashion():
    """The first 2,000 Fashion-MNIST training images (real data)."""
    ds = data.fashion_mnist(split="train")
    return TensorDataset(ds.tensors[0][:2000], ds.tensors[1][:2000])


def test_lr_schedule_hand_values():
    assert train.lr_at(0, 100, 1.0) == pytest.approx(0.1)  # warm-up: 10 steps
    assert train.lr_at(9, 100, 1.0) == pytest.approx(1.0)
    assert train.lr_at(10, 100, 1.0) == pytest.approx(1.0)  # cosine starts at the peak
    assert train.lr_at(55, 100, 1.0) == pytest.approx(0.5)  # half-way through the cosine
    assert train.lr_at(99, 100, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_as_tensors_and_confusion_matrix():
    x, y = torch.arange(10.0).reshape(10, 1), torch.arange(10) % 3
    subset = Subset(Subset(TensorDataset(x, y), [9, 8, 7, 6]), [1, 3])
    sx, sy = data.as_tensors(subset)
    assert sx.flatten().tolist() == [8.0, 6.0] and sy.tolist() == [2, 0]
    generic = [(x[i], y[i]) for i in range(10)]  # not a TensorDataset: goes through a DataLoader
    gx, gy = data.as_tensors(generic)
    assert torch.equal(gx, x) and torch.equal(gy, y)
    cm = evaluate.confusion_matrix(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0]), num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


@needs_fashion
def test_training_lowers_loss_and_evaluate(fashion):
    small = Subset(fashion, range(1024))
    x, y = data.as_tensors(small)
    torch.manual_seed(0)
    model = models.fmnist_vgg()
    history = train.train_classifier(model, small, epochs=3, batch_size=32, lr=3e-3, seed=0, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert len(history["train_loss"]) == len(history["seconds"]) == 3
    model.train()
    accuracy, predictions = evaluate.classifier_accuracy(model, small, batch_size=100)
    assert model.training  # evaluate restores the mode it found
    assert predictions.shape == (1024,) and accuracy == pytest.approx((predictions == y).float().mean().item())
    assert accuracy > 0.6  # 10 classes: chance is 0.1


def _interrupt_after(monkeypatch, calls):
    original = train._classifier_epoch
    count = {"n": 0}

    def epoch(*args, **kwargs):
        if count["n"] == calls:
            raise KeyboardInterrupt
        count["n"] += 1
        return original(*args, **kwargs)
    monkeypatch.setattr(train, "_classifier_epoch", epoch)


@needs_fashion
def test_checkpoint_resume_is_exact(fashion, tmp_path, monkeypatch):
    small = Subset(fashion, range(256))
    options = dict(epochs=3, batch_size=64, lr=3e-3, seed=1, progress=False, val_set=Subset(fashion, range(1900, 2000)))
    torch.manual_seed(0)
    straight = models.fmnist_vgg()
    expected = train.train_classifier(straight, small, **options)

    ckpt = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train.train_classifier(models.fmnist_vgg(), small, checkpoint=ckpt, **options)
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp"))
    torch.manual_seed(123)  # a different init and RNG state: everything must come from the checkpoint
    resumed_model = models.fmnist_vgg()
    resumed = train.train_classifier(resumed_model, small, checkpoint=ckpt, **options)
    for key in ("train_loss", "train_acc", "val_acc"):
        assert resumed[key] == expected[key], key
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="delete it"):
        train.train_classifier(models.fmnist_vgg(), small, checkpoint=ckpt, **{**options, "lr": 1e-3})


@pytest.fixture
def prednet(fashion):
    torch.manual_seed(0)
    backbone = models.fmnist_vgg()
    with torch.no_grad():
        backbone(fashion.tensors[0][:256])  # non-trivial BatchNorm running statistics
    return pcnet.predify(backbone, layers=models.FMNIST_VGG_LAYERS, input_shape=(1, 28, 28))


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@needs_fashion
def test_train_feedback_freezes_backbone_and_trains_decoders(fashion, prednet):
    small = Subset(fashion, range(256))
    backbone_before, decoders_before = _snapshot(prednet.backbone), _snapshot(prednet.decoders)
    loss_before = evaluate.feedback_loss_on(prednet, small)
    history = train.train_feedback(prednet, small, epochs=2, batch_size=32, lr=1e-3, seed=0,
                                   val_set=small, progress=False)
    backbone_after = prednet.backbone.state_dict()
    for key, value in backbone_before.items():  # weights and BN running_mean/var/num_batches_tracked
        assert torch.equal(backbone_after[key], value), key
    assert any(k.endswith("running_mean") for k in backbone_before)
    changed = [not torch.equal(prednet.decoders.state_dict()[k], v) for k, v in decoders_before.items()]
    assert all(changed)
    n = len(models.FMNIST_VGG_LAYERS)
    assert len(history["step_loss"]) == 16 and all(len(s) == n for s in history["step_loss"])
    loss_after = torch.tensor(history["val_loss"][-1])
    assert (loss_after < loss_before).all()  # every layer reconstructs better than at initialisation
    assert torch.allclose(loss_after, evaluate.feedback_loss_on(prednet, small))


@needs_fashion
def test_train_feedback_resume_is_exact(fashion, prednet, tmp_path, monkeypatch):
    small = Subset(fashion, range(128))  # 4 batches of 32 per epoch
    start = _snapshot(prednet.decoders)
    options = dict(epochs=2, batch_size=32, lr=1e-3, seed=3, progress=False)
    expected = train.train_feedback(prednet, small, **options)
    final = _snapshot(prednet.decoders)

    prednet.decoders.load_state_dict(start)
    ckpt = tmp_path / "fb.ckpt"  # interrupted in the middle of epoch 2
    interrupted(monkeypatch, lambda: train.train_feedback(prednet, small, checkpoint=ckpt, **options),
                target=pcnet, name="feedback_step", after=6)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = train.train_feedback(prednet, small, checkpoint=ckpt, **options)  # decoders half-trained now
    assert resumed["step_loss"] == expected["step_loss"]
    for key, value in final.items():
        assert torch.equal(prednet.decoders.state_dict()[key], value), key


@needs_fashion
def test_feedback_baseline_loss_is_target_variance(fashion, prednet):
    small = Subset(fashion, range(300))
    x = fashion.tensors[0][:300]
    with torch.no_grad():
        states = prednet.run(x, timesteps=0, record=("states",)).states
    targets = [x] + [s[0] for s in states[:-1]]
    expected = torch.stack([t.double().var(0, unbiased=False).mean() for t in targets]).float()
    assert torch.allclose(evaluate.feedback_baseline_loss(prednet, small, batch_size=70), expected, rtol=1e-4)


def test_state_fingerprint_sees_buffers():
    torch.manual_seed(0)
    model = models.fmnist_vgg()
    first = train.state_fingerprint(model)
    assert train.state_fingerprint(model) == first and len(first) == 64
    saved = model.features[1].running_mean.clone()
    model.features[1].running_mean[0] += 1e-6  # a BatchNorm buffer, not a parameter
    assert train.state_fingerprint(model) != first
    model.features[1].running_mean.copy_(saved)
    model.to(memory_format=torch.channels_last)  # memory layout does not matter, values do
    assert train.state_fingerprint(model) == first


def test_seeded_prednet_is_reproducible(prednet):
    a = train.seeded_prednet(prednet.backbone, seed=5)
    b = train.seeded_prednet(prednet.backbone, seed=5)
    c = train.seeded_prednet(prednet.backbone, seed=6)
    assert train.state_fingerprint(a.decoders) == train.state_fingerprint(b.decoders)
    assert train.state_fingerprint(a.decoders) != train.state_fingerprint(c.decoders)
    assert a.layers == models.FMNIST_VGG_LAYERS


@needs_fashion
def test_cli_writes_weights_with_provenance(tmp_path, monkeypatch):
    """A backbone seed other than 0 gets its own files (fmnist_vgg_seed3.pt) and its own decoders."""
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    train.main(["backbone", "--epochs", "1", "--limit", "256", "--val-size", "100", "--seed", "3"])
    assert not models.reference_weights_path().exists()  # seed 0's file name is left alone
    prov = pcnet.experiments.weights.load_provenance(models.reference_weights_path(backbone_seed=3))
    assert prov["command"] == "python -m pcnet.experiments.train backbone --epochs 1 --limit 256 --val-size 100 --seed 3"
    assert prov["seed"] == 3 and prov["extra"]["options"]["limit"] == 256 and 0 <= prov["extra"]["test_acc"] <= 1
    history = pcnet.experiments.weights.load_json_result(tmp_path / "results" / "fmnist_vgg_seed3_history.json")
    assert len(history["step_loss"]) == 2 and history["test_acc"] == prov["extra"]["test_acc"]
    assert not list((tmp_path / "cache").glob("*"))  # checkpoint removed after the final save
    train.main(["feedback", "--epochs", "1", "--limit", "64", "--backbone-seed", "3", "--seed", "1"])
    prov = pcnet.experiments.weights.load_provenance(models.feedback_weights_path(seed=1, backbone_seed=3))
    assert prov["extra"]["backbone_before"] == prov["extra"]["backbone_after"]
    assert prov["extra"]["fit"]["layers"] == models.FMNIST_VGG_LAYERS and prov["extra"]["options"]["val_size"] == 5000
    assert prov["extra"]["backbone_before"] == train.state_fingerprint(models.load_reference_backbone(backbone_seed=3))
    net = models.load_reference_prednet(seed=1, backbone_seed=3)
    assert len(pcnet.experiments.weights.load_json_result(
        tmp_path / "results" / "fmnist_vgg_seed3_feedback_seed1_history.json")["step_loss"]) == 1
    with pytest.raises(SystemExit):
        train.main(["backbone", "--backbone-seed", "1"])  # a backbone's own seed is --seed
    assert net.layers == models.FMNIST_VGG_LAYERS
