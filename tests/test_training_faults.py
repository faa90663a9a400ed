"""Training that goes wrong (issue 11, items 2, 4, 5): non-finite steps stop and restore, resumes check every
option that changes the result, decoder weights refuse a PredNet built at other layers."""
import pytest
import torch
from torch.utils.data import TensorDataset

import pcnet
import pcnet.experiments.data as data
import pcnet.experiments.weights as weights
from pcnet.experiments import models, train
from tiny import random_images as _images
from tiny import same_state as _same
from tiny import interrupted, small_cnn, small_prednet
from tiny import state_copy as _copy


@pytest.fixture
def net():
    return small_prednet()


def test_feedback_step_with_overflowing_update_is_undone(net):
    before = _copy(net.decoders)
    optimizer = torch.optim.SGD(net.decoders.parameters(), lr=float("inf"))  # the update makes the weights inf
    with pytest.raises(FloatingPointError, match=r"non-finite gradient or weights in decoder.*undone.*learning rate"):
        pcnet.feedback_step(net, torch.rand(4, 1, 16, 16), optimizer)
    assert _same(_copy(net.decoders), before)


def test_feedback_step_with_non_finite_loss_takes_no_step(net):
    with torch.no_grad():
        net.decoders[1][1].weight[0, 0, 0, 0] = float("inf")
    before = _copy(net.decoders)
    optimizer = torch.optim.Adam(net.decoders.parameters(), lr=1e-3)
    with pytest.raises(FloatingPointError, match=r"feedback loss is not finite.*not taken"):
        pcnet.feedback_step(net, torch.rand(4, 1, 16, 16), optimizer)
    assert _same(_copy(net.decoders), before) and not optimizer.state  # no Adam step either


def test_train_feedback_divergence_names_the_batch_and_restores(net):
    before = _copy(net.decoders)
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 2 of 4 \(lr=1e\+20\).*put back"):
        train.train_feedback(net, _images(64), epochs=2, batch_size=16, lr=1e20, seed=0, progress=False)
    assert _same(_copy(net.decoders), before)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train.train_feedback(net, _images(64), epochs=1, batch_size=16, lr=float("nan"), seed=0, progress=False)


def test_cli_feedback_that_diverges_exits_nonzero_and_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.setattr(models, "load_reference_backbone", lambda name, backbone_seed=0: models.fmnist_vgg().eval())
    monkeypatch.setattr(train, "reference_data", lambda name, split: _images_28(128))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["feedback", "--lr", "1e20", "--epochs", "1", "--batch-size", "32", "--val-size", "32"])
    assert exit_info.value.code not in (0, None) and "Nothing was saved" in str(exit_info.value.code)
    assert "epoch 1, batch" in str(exit_info.value.code)
    assert not (tmp_path / "weights").exists() and not (tmp_path / "MANIFEST.json").exists()


def test_train_feedback_that_diverges_finitely_refuses_and_restores(net):
    """lr=1e6 keeps every value finite (losses near 1e13, issue 20): still refused, decoders put back."""
    before = _copy(net.decoders)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1 \(lr=1000000.0\).*times the first batch's"
                                                 r".*Lower the learning rate \(e.g. lr=10000\).*put back"):
        train.train_feedback(net, _images(64), epochs=2, batch_size=16, lr=1e6, seed=0, progress=False)
    assert _same(_copy(net.decoders), before)
    history = train.train_feedback(net, _images(64), epochs=2, batch_size=16, lr=1e-2, seed=0, progress=False)
    assert sum(history["epoch_loss"][-1]) < sum(history["step_loss"][0])  # a sane lr trains and is kept


def test_cli_feedback_at_lr_1e6_exits_nonzero_and_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.setattr(models, "load_reference_backbone", lambda name, backbone_seed=0: models.fmnist_vgg().eval())
    monkeypatch.setattr(train, "reference_data", lambda name, split: _images_28(128))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["feedback", "--lr", "1e6", "--epochs", "1", "--batch-size", "32", "--val-size", "32"])
    assert "diverged at epoch 1" in str(exit_info.value.code) and "Nothing was saved" in str(exit_info.value.code)
    assert not (tmp_path / "weights").exists() and not (tmp_path / "MANIFEST.json").exists()


class _ImagesOnly(torch.utils.data.Dataset):
    """A map-style dataset whose items are bare images, as a user's unlabelled data set would be."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def test_train_feedback_takes_images_without_labels():
    """A tensor, an image-only dataset, labelled datasets and DataLoaders over them all train the same decoders."""
    x, y = _images(48).tensors
    loader = torch.utils.data.DataLoader
    sources = {"tensor": x, "TensorDataset(images)": TensorDataset(x), "labelled": TensorDataset(x, y),
               "images-only Dataset": _ImagesOnly(x), "DataLoader": loader(TensorDataset(x, y), batch_size=5),
               "DataLoader(images)": loader(_ImagesOnly(x), batch_size=7),
               "Subset": torch.utils.data.Subset(TensorDataset(x, y), range(48))}
    results = {}
    for name, source in sources.items():
        net = small_prednet()
        history = train.train_feedback(net, source, val_set=source, epochs=1, batch_size=16, lr=1e-2, seed=0,
                                       progress=False)
        results[name] = (history["step_loss"], history["val_loss"], _copy(net.decoders))
    ref = results["labelled"]
    for name, (steps, val, state) in results.items():
        assert steps == ref[0] and val == ref[1] and _same(state, ref[2]), name
    assert len(ref[0]) == 3 and ref[1][0][0] > 0


@pytest.mark.parametrize("bad, error, match", [
    ([[0.5, 0.2]], TypeError, r"train_set must be images, got list; pass a tensor of images \(N, C, H, W\)"),
    ("images/", TypeError, "train_set must be images, got str"),
    (torch.rand(16, 16), ValueError, r"at least one image of shape \(C, H, W\), got images of shape \(16, 16\)"),
    (_ImagesOnly([1, 2, 3]), TypeError, r"items are int, not image tensors \(add a transforms.ToTensor\(\)\)"),
    (_ImagesOnly([]), ValueError, "train_set is empty"),
    (torch.utils.data.DataLoader(_ImagesOnly([{"x": 1}]), batch_size=1), TypeError, "DataLoader gave dict"),
], ids=["list", "str", "2-D tensor", "ints", "empty", "loader of dicts"])
def test_train_feedback_bad_data_names_what_to_pass(net, bad, error, match):
    before = _copy(net.decoders)
    with pytest.raises(error, match=match):
        train.train_feedback(net, bad, epochs=1, batch_size=16, lr=1e-3, seed=0, progress=False)
    assert _same(_copy(net.decoders), before)


def _images_28(n):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_cli_feedback_honours_val_size_and_patience(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    seen = {}

    def fake_run(backbone, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")
    monkeypatch.setattr(models, "load_reference_backbone", lambda name, backbone_seed=0: models.fmnist_vgg().eval())
    monkeypatch.setattr(train, "reference_feedback_run", fake_run)
    with pytest.raises(SystemExit):
        train.main(["feedback", "--val-size", "123", "--limit", "7"])
    assert seen["val_size"] == 123 and seen["limit"] == 7 and "patience" not in seen
    with pytest.raises(SystemExit):
        train.main(["feedback", "--patience", "3", "--epochs", "30"])
    assert seen["patience"] == 3 and seen["epochs"] == 30  # early stopping reaches the run; --epochs is its maximum
    with pytest.raises(SystemExit) as exit_info:
        train.main(["backbone", "--patience", "3"])
    assert exit_info.value.code == 2  # argparse error: early stopping is for feedback training


def test_resume_refuses_another_training_split(tmp_path, monkeypatch):
    """Same size, same options, other images (what another --val-size or --limit gives): refused, not resumed."""
    ckpt, options = tmp_path / "run.ckpt", dict(epochs=2, batch_size=16, lr=1e-3, seed=0, progress=False)
    interrupted(monkeypatch, lambda: train.train_classifier(small_cnn(), _images(32), checkpoint=ckpt, **options),
                target=train, name="_classifier_epoch", after=1)
    with pytest.raises(ValueError, match="delete it to start afresh or pass the same options"):
        train.train_classifier(small_cnn(), _images(32, seed=1), checkpoint=ckpt, **options)
    with pytest.raises(ValueError, match="'val_size': 100"):
        train.train_classifier(small_cnn(), _images(32), checkpoint=ckpt, run_options={"val_size": 100}, **options)


def test_resume_refuses_feedback_run_options(net, tmp_path):
    ckpt, options = tmp_path / "fb.ckpt", dict(epochs=1, batch_size=16, lr=1e-3, seed=0, progress=False)
    train.train_feedback(net, _images(32), checkpoint=ckpt, run_options={"val_size": 5000, "limit": None}, **options)
    with pytest.raises(ValueError, match="was made with"):
        train.train_feedback(net, _images(32), checkpoint=ckpt, run_options={"val_size": 100, "limit": None}, **options)


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", None], ids=["empty", "garbage", "truncated"])
def test_unreadable_checkpoint_names_the_file_and_the_fix(tmp_path, content):
    ckpt = tmp_path / "run.ckpt"
    if content is None:
        torch.save({"config": {}, "epoch": 1, "model": small_cnn().state_dict()}, ckpt)
        content = ckpt.read_bytes()[:200]
    ckpt.write_bytes(content)
    with pytest.raises(RuntimeError, match=r"checkpoint .*run.ckpt is unreadable.*delete it to start afresh"):
        train.train_classifier(small_cnn(), _images(16), epochs=1, batch_size=16, lr=1e-3, seed=0,
                               checkpoint=ckpt, progress=False)


def test_decoder_weights_refuse_other_layers_of_the_same_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    torch.manual_seed(0)
    model = small_cnn()
    trained = pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16))
    other = pcnet.predify(model, layers=["0", "3"], input_shape=(1, 16, 16))  # same shapes, other layers
    assert trained.shapes == other.shapes
    path = tmp_path / "weights" / "dec.pt"
    weights.save_decoders(path, trained, preset="small", command="test", seed=0)
    with pytest.raises(ValueError, match=r"trained for layers=\['1', '4'\]; this PredNet has layers=\['0', '3'\]"):
        weights.load_decoders(path, other, preset="small")
    with pytest.raises(ValueError, match=r"preset=small.*preset=other"):
        weights.load_decoders(path, trained, preset="other")
    fresh = pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16))
    weights.load_decoders(path, fresh, preset="small")
    assert _same(fresh.decoders.state_dict(), trained.decoders.state_dict())
    weights.save_weights(tmp_path / "weights" / "bare.pt", trained.decoders.state_dict(), command="test", seed=0)
    with pytest.raises(ValueError, match="does not record the preset.*save_decoders"):
        weights.load_decoders(tmp_path / "weights" / "bare.pt", fresh, preset="small")
