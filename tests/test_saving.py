"""Plain save and load of a network's feedback (issue 21): one file, its own sha256, checked layers and shapes."""
import pytest
import torch

import pcnet
from pcnet import saving
from tiny import same_state, small_cnn, small_prednet, state_copy


def _trained():
    net = small_prednet()
    opt = torch.optim.Adam(net.decoders.parameters(), lr=1e-2)
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        pcnet.feedback_step(net, x, opt)
    return net.eval()


def _fresh(layers=("1", "4"), seed=1, **options):
    torch.manual_seed(seed)  # other initial decoders than the saved ones
    return pcnet.predify(small_cnn(), layers=list(layers), input_shape=(1, 16, 16), **options)


def test_round_trip_gives_the_same_dynamics_and_writes_one_file(tmp_path):
    net = _trained()
    path = tmp_path / "mine" / "feedback.pt"
    sha = net.save_feedback(path, note="3 Adam steps")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["feedback.pt"]  # no manifest, sidecar, lock
    other = _fresh()
    other.backbone.load_state_dict(net.backbone.state_dict())
    x = torch.rand(4, 1, 16, 16)
    assert not torch.allclose(other(x, timesteps=3), net(x, timesteps=3))
    assert pcnet.load_feedback(other, path) is other
    assert same_state(state_copy(other.decoders), state_copy(net.decoders))
    assert torch.equal(other(x, timesteps=3), net(x, timesteps=3))
    record = saving.read_feedback(path)
    assert record["sha256"] == sha and len(sha) == 64 and record["note"] == "3 Adam steps"
    assert record["layers"] == ["1", "4"] and record["hparams"]["beta"] == pytest.approx([0.8, 0.8])
    assert not any("revision" in k or "git" in k for k in record)  # no pcnet provenance
    assert net.save_feedback(path, note="3 Adam steps") == sha  # deterministic: same weights, same hash


def test_wrong_layers_shapes_or_architecture_change_nothing(tmp_path):
    path = tmp_path / "fb.pt"
    _trained().save_feedback(path)
    cases = [(_fresh(layers=("0", "3")), r"feedback for layers=\['1', '4'\]; this network has layers=\['0', '3'\]"),
             (pcnet.predify(torch.nn.Sequential(*small_cnn()[:6], torch.nn.Flatten(), torch.nn.Linear(6 * 64, 3)),
                            layers=["1", "4"], input_shape=(1, 32, 32)), r"input_shape=\[1, 16, 16\]; this network has"),
             (_fresh(decoders=[torch.nn.Sequential(torch.nn.Upsample(size=(16, 16)), torch.nn.Conv2d(4, 1, 1)),
                               torch.nn.Sequential(torch.nn.Upsample(size=(16, 16)), torch.nn.Conv2d(6, 4, 1))]),
              r"decoders of another architecture .*other shapes")]
    for net, match in cases:
        before = state_copy(net.decoders)
        with pytest.raises(ValueError, match=match):
            pcnet.load_feedback(net, path)
        assert same_state(state_copy(net.decoders), before)


def test_garbage_damaged_or_missing_files_name_the_fix(tmp_path):
    net = _fresh()
    before = state_copy(net.decoders)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    torch.save({"decoders": {}}, tmp_path / "other.pt")
    good = tmp_path / "good.pt"
    _trained().save_feedback(good)
    record = torch.load(good, weights_only=True)
    next(iter(record["decoders"].values())).view(-1)[0] += 1  # one weight changed, the recorded hash kept
    torch.save(record, tmp_path / "damaged.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:300])
    for name, match in [("garbage.pt", "not a pcnet feedback file .*unreadable"),
                        ("other.pt", "not a pcnet feedback file .*no format"),
                        ("damaged.pt", "is damaged: its contents do not match the sha256"),
                        ("truncated.pt", "not a pcnet feedback file .*unreadable")]:
        with pytest.raises(ValueError, match=match + r".*net.save_feedback\(path\)"):
            pcnet.load_feedback(net, tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"no feedback file at .*missing.pt; write one with net.save_feedback"):
        pcnet.load_feedback(net, tmp_path / "missing.pt")
    assert same_state(state_copy(net.decoders), before)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "fb.pt"
    net = _trained()
    sha = net.save_feedback(path)

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(saving.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _fresh().save_feedback(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fb.pt"] and saving.read_feedback(path)["sha256"] == sha
