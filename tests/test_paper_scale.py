"""Chapter 7: the SCALE="paper" code path end to end on a tiny synthetic ImageFolder (offline, untrained backbones),
the demo's pieces, the measured costs, and the errors for bad chapter parameters."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from pcnet.experiments import paper_scale as ps
from pcnet.experiments import scale_costs, scale_eval
from pcnet.experiments.data import IMAGENETTE_IMAGENET_INDEX
from pcnet.experiments.train_scale import image_folder
from pcnet.experiments.zoo import preprocessing

T = 1
CFG = dict(image_size=32, seed=0, train=dict(epochs=1, batch_size=8, lr=1e-3, workers=0, max_steps=2), n_eval=8,
           sigmas=[0.0, 0.2], timesteps=T, batch_size=8, corruptions=["gaussian_noise"], severities=[1], n_corrupt=4,
           n_attack=2, eps=[1 / 255], attack_steps=2, attack_batch=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with Imagenette's 10 class folders, 4 random 48x40 RGB PNGs each."""
    root = tmp_path_factory.mktemp("imagenette_like")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ps.IMAGENETTE_WNIDS:
            (root / split / wnid).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{i}.png")
    return root


@pytest.mark.parametrize("preset", ["pefficientnet_b0", "pvgg16"])
def test_paper_path_end_to_end(preset, folder, tmp_path, one_thread):
    data = ps.resolve_data(folder)
    assert data == {"train": folder / "train", "val": folder / "val"}
    out = ps.run_paper(preset, data=data, weights=None, feedback=None, device="cpu",
                       cfg={**CFG, "cache_dir": tmp_path / "imagenet_c"}, progress=False)
    net, noise = out["net"], out["noise"]
    assert out["feedback"]["images"] == 2 * 8 and len(out["feedback"]["epoch_loss"]) == 0  # 2 steps, epoch unfinished
    # results keyed per noise level and timestep, one column per image
    assert list(noise["correct"]) == CFG["sigmas"]
    for row in noise["correct"].values():
        for name in scale_eval.FEEDBACKS:
            assert row[name].shape == (T + 1, 8) and row[name].dtype == torch.bool
        assert row["rescale"].shape == (1, 8)
    tta = {"BN adaptation", "TENT"}
    if preset == "pvgg16":  # VGG16 has no BatchNorm: the baselines are skipped, and the result says why
        assert set(noise["skipped"]) == tta and not tta & set(noise["correct"][0.0])
    else:
        assert {k: v.shape for k, v in noise["correct"][0.0].items() if k in tta} == {k: (1, 8) for k in tta}
    assert list(scale_eval.accuracy_table(noise).columns) == ["t=0", "t=1"]
    # t = 0 is the backbone: the same logits on the evaluation images, labels mapped to ImageNet's indices
    val = image_folder(data["val"], transform=preprocessing(net))
    subset = ps.eval_subset(ps.Relabel(val, ps.imagenet_index(val.classes)), n=8, seed=0)
    x, y = zip(*(subset[i] for i in range(8)))
    x, y = torch.stack(x), list(y)  # (8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x, timesteps=T)[0], net.backbone(x), rtol=0, atol=0)
        backbone_correct = net.backbone(x).argmax(-1) == torch.tensor(y)
    assert set(y) <= set(IMAGENETTE_IMAGENET_INDEX)
    assert torch.equal(noise["correct"][0.0]["dynamics"][0], backbone_correct)
    assert out["corruptions"]["dynamics"].shape == (1, 1, T + 1, 4)
    if preset == "pvgg16":
        assert set(out["corruptions"]) == set(scale_eval.FEEDBACKS) | {"rescale"}
    else:  # rescale, BN adaptation and TENT on ImageNet-C, stacked after the backbone (t=0 of the dynamics)
        assert set(out["corruptions"]) == set(scale_eval.FEEDBACKS) | tta | {"rescale"}
    for name in (tta | {"rescale"}) & set(out["corruptions"]):
        assert out["corruptions"][name].shape == (1, 1, 2, 4)
        assert torch.equal(out["corruptions"][name][:, :, 0], out["corruptions"]["dynamics"][:, :, 0])
    with pytest.raises(ValueError, match="method must be one of"):
        scale_eval.tta_corruption_correct(net, {}, method="tent", batch_size=2)
    attacks = out["attacks"]["correct"][1 / 255]
    assert set(attacks) == {"t=0", "t=T", "per_attack"} and attacks["t=0"].shape == (2,)
    assert set(attacks["per_attack"]) == {"apgd-ce", "apgd-dlr"}
    for t in ("t=0", "t=T"):  # robust = no attack succeeded
        assert torch.equal(attacks[t], attacks["per_attack"]["apgd-ce"][t] & attacks["per_attack"]["apgd-dlr"][t])
    assert [v.contrast for v in scale_eval.attack_family(out["attacks"])] == ["ε=1/255: t=T − t=0"]


def test_paper_feedback_loads_a_file_instead_of_training(folder, tmp_path, one_thread):
    torch.manual_seed(1)
    source = ps.paper_net("pefficientnet_b0", weights=None, image_size=32, device="cpu", seed=1)
    torch.save(source.decoders.state_dict(), tmp_path / "feedback.pt")
    net = ps.paper_net("pefficientnet_b0", weights=None, image_size=32, device="cpu", seed=0)
    report = ps.paper_feedback(net, feedback=tmp_path / "feedback.pt", train_folder=None, epochs=1, batch_size=8,
                               lr=1e-3, seed=0, workers=0)
    assert report["layout"] == "pcnet"
    for a, b in zip(net.decoders.state_dict().values(), source.decoders.state_dict().values()):
        assert torch.equal(a, b)


def test_imagenet_index_maps_imagenette_and_keeps_imagenet_order():
    assert ps.imagenet_index(ps.IMAGENETTE_WNIDS).tolist() == list(IMAGENETTE_IMAGENET_INDEX)
    assert ps.imagenet_index([f"n{i:08d}" for i in range(1000)]).tolist() == list(range(1000))
    with pytest.raises(ValueError, match="DATA has 1001 classes"):
        ps.imagenet_index([str(i) for i in range(1001)])


def test_bad_scale_and_data_name_the_parameter_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r'SCALE must be "demo" .* or "paper" .*got \'full\''):
        ps.check_scale("full")
    assert ps.check_scale("demo") == "demo"
    with pytest.raises(FileNotFoundError, match=r"DATA='.*nowhere' cannot be used: .*is not a folder.*imagenette"):
        ps.resolve_data(tmp_path / "nowhere")
    (tmp_path / "loose").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "loose" / "a.png")
    with pytest.raises(ValueError, match=r"DATA=.*loose' cannot be used: .*is not an ImageFolder.*class folders"):
        ps.resolve_data(tmp_path / "loose")
    with pytest.raises(ValueError, match=r"PRESETS may contain"):
        ps.paper_net("presnet18", weights=None, image_size=32, device="cpu", seed=0)


def test_demo_network_predicts_what_the_backbone_does_at_t0_and_trains_on_crops(one_thread):
    net = ps.plite0(pretrained=False)
    assert net.layers == ps.LITE0_LAYERS
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x, timesteps=1)[0], net.backbone(x), rtol=0, atol=0)
    photos = torch.rand(3, 3, 64, 80)
    crops = ps.PhotoCrops(photos, size=32, repeats=2)
    assert len(crops) == 6 and crops[4][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="photos must be"):
        ps.PhotoCrops(photos[:, :1])


def test_noise_family_counts_a_hand_made_study():
    n = 10
    dyn = torch.zeros(3, n, dtype=torch.bool)
    dyn[0, :4] = True  # t = 0: 4 right
    dyn[2, :7] = True  # t = T: 7 right (3 gained, none lost)
    zero = dyn.clone()
    zero[2, 6] = False  # the control loses one image at T
    study = {"correct": {0.1: {"dynamics": dyn, "zero": zero, "rescale": dyn[:1]}}}
    family = scale_eval.noise_family(study)
    assert [v.contrast for v in family] == ["σ=0.1: dynamics t=T − t=0", "σ=0.1: dynamics − zero (t=T)",
                                            "σ=0.1: dynamics − rescale (t=T)"]
    assert [round(v.estimate, 6) for v in family] == [30.0, 10.0, 30.0]
    assert family[0].p == pytest.approx(0.25)  # exact McNemar, 3 vs 0 discordant: 2 * 0.5 ** 3
    assert family[0].p_holm == pytest.approx(0.75)  # smallest of 3 p-values, times 3
    assert all(v.n == n for v in family)


def test_runtime_table_is_passes_times_measured_costs(one_thread):
    costs = {"per_image_s": {"backbone": 1.0, "t0": 1.0, "step": 2.0, "train": 3.0, "grad0": 4.0, "grad_step": 5.0},
             "hardware": "hand-made"}
    plan = dict(n_train=10, epochs=2, n_eval=5, sigmas=2, n_corrupt=3, corruptions=2, severities=5, n_attack=4, eps=3,
                attack_steps=7, timesteps=10)
    rows = {r["task"]: r for r in scale_costs.runtime_rows(costs, **plan)}
    assert rows["feedback training"]["image passes"] == 20 and rows["feedback training"]["s per pass"] == 3.0
    assert rows["Gaussian noise: dynamics + 3 feedback controls"]["s per pass"] == 1.0 + 10 * 2.0
    assert rows["ImageNet-C: dynamics + 3 feedback controls"]["image passes"] == 3 * 2 * 5 * 4
    # two attacks (APGD-CE, APGD-DLR) x 4 images x 3 budgets x 7 steps, each a forward-backward through T = 10 steps
    assert rows["attacks at t=T (forward-backward per step)"]["hours"] == pytest.approx(2 * 4 * 3 * 7 * (4 + 10 * 5) / 3600)
    assert rows["ImageNet-C: TENT (forward-backward)"]["image passes"] == 3 * 2 * 5
    # backbone-cost passes per image: rescale + its backbone reference (2), BN adaptation (2) + its reference (1)
    assert rows["ImageNet-C: rescale, BN adaptation and their backbone references"]["image passes"] == 3 * 2 * 5 * 5
    no_bn = {r["task"]: r for r in scale_costs.runtime_rows(costs, batchnorm=False, **plan)}
    assert "Gaussian noise: TENT (forward-backward)" not in no_bn  # VGG16: no BN adaptation, no TENT
    assert "ImageNet-C: TENT (forward-backward)" not in no_bn
    assert no_bn["ImageNet-C: rescale, BN adaptation and their backbone references"]["image passes"] == 3 * 2 * 5 * 2
    assert no_bn["Gaussian noise: rescale + BN adaptation (2 passes)"]["image passes"] == 5 * 2
    assert rows["Gaussian noise: rescale + BN adaptation (2 passes)"]["image passes"] == 5 * 2 * 3
    table = scale_costs.runtime_table(costs, **plan)
    assert table.loc["total", "hours"] == pytest.approx(round(sum(r["hours"] for r in rows.values()), 2), abs=0.01)
    assert table.attrs["hardware"] == "hand-made"


def test_measured_costs_are_positive_and_labelled(one_thread):
    net = ps.plite0(pretrained=False)
    before = [p.clone() for p in net.decoders.parameters()]
    costs = scale_costs.measure_costs(net, batch=2, timesteps=1, grad_timesteps=1, repeats=1)
    assert set(costs["per_image_s"]) == {"backbone", "t0", "step", "train", "grad0", "grad_step"}
    assert all(v > 0 for k, v in costs["per_image_s"].items() if k not in ("step", "grad_step"))
    assert costs["clock"] == "process CPU time, 1 thread" and "1 torch threads" in costs["hardware"]
    assert all(torch.equal(a, b) for a, b in zip(before, net.decoders.parameters()))


def test_noise_study_rejects_unknown_baselines():
    net = ps.plite0(pretrained=False)
    with pytest.raises(ValueError, match="tta_methods may contain"):
        scale_eval.noise_study(net, TensorDataset(torch.rand(2, 3, 224, 224), torch.zeros(2, dtype=torch.long)),
                               sigmas=[0.0], timesteps=1, batch_size=2, tta_methods=("TTT",))


def test_generated_imagenet_c_takes_the_chosen_images(folder, tmp_path):
    from pcnet.experiments.imagenet_c import generate_imagenet_c

    sets = generate_imagenet_c(folder / "val", names=["gaussian_noise"], severities=[1], size=32, indices=[5, 0, 39],
                               cache_dir=tmp_path, progress=False)
    assert sets["gaussian_noise", 1].labels.tolist() == [1, 0, 9]  # 4 images per class folder, in sorted order
    assert sets["gaussian_noise", 1].images.shape == (3, 3, 32, 32)


def test_runtime_refuses_negative_measured_costs():
    costs = {"per_image_s": {"backbone": 1.0, "t0": 1.0, "step": -0.5, "train": 3.0, "grad0": 4.0, "grad_step": 5.0},
             "hardware": "hand-made"}
    with pytest.raises(ValueError, match=r"'step': -0.5.*negative.*more repeats"):
        scale_costs.runtime_rows(costs, n_train=1, epochs=1, n_eval=1, sigmas=1, n_corrupt=1, corruptions=1,
                                 severities=1, n_attack=1, eps=1, attack_steps=1, timesteps=1)
