"""pcnet.experiments.metrics against hand-computed values."""
import pytest
import torch

from pcnet.experiments import metrics as M


def test_accuracy_per_timestep_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]],    # t=0: predicts 0, 1, 0
                           [[0.0, 2.0], [0.0, 1.0], [0.0, 1.0]]])   # t=1: predicts 1, 1, 1
    labels = torch.tensor([0, 1, 1])
    assert torch.allclose(M.accuracy_per_timestep(logits, labels), torch.tensor([2 / 3, 2 / 3]))
    assert torch.allclose(M.accuracy_per_timestep(logits[0], labels), torch.tensor(2 / 3))
    with pytest.raises(ValueError, match="batch"):
        M.accuracy_per_timestep(logits, labels[:2])


def test_ce_mce_and_normalised_by_hand():
    # 2 corruptions x 2 severities x 2 timesteps of accuracies
    acc = torch.tensor([[[0.9, 0.8], [0.5, 0.6]],
                        [[0.7, 0.7], [0.2, 0.4]]])
    # CE_0(t) = (0.1 + 0.5, 0.2 + 0.4) = (0.6, 0.6); CE_1(t) = (0.3 + 0.8, 0.3 + 0.6) = (1.1, 0.9)
    assert torch.allclose(M.corruption_error(acc), torch.tensor([[0.6, 0.6], [1.1, 0.9]]))
    assert torch.allclose(M.mce(acc), torch.tensor([0.85, 0.75]))
    assert torch.allclose(M.normalised_ce(acc), torch.tensor([[1.0, 1.0], [1.0, 0.9 / 1.1]]))
    assert torch.allclose(M.normalised_mce(acc), torch.tensor([1.0, 0.75 / 0.85]))
    ref = torch.full((2, 2, 1), 0.5)  # another model's t=0: CE = 1.0 for both, mCE = 1.0
    assert torch.allclose(M.normalised_mce(acc, reference=ref), torch.tensor([0.85, 0.75]))
    assert torch.allclose(M.normalised_ce(acc, reference=ref), M.corruption_error(acc))
    seeds = torch.stack([acc, acc])  # leading dims broadcast
    assert M.normalised_mce(seeds).shape == (2, 2)


def test_correct_and_accuracy_grid():
    labels = torch.tensor([0, 1, 0, 1])

    def predict(x):  # class 1 iff the mean pixel > 0.5; "timestep" 1 always predicts 0
        p1 = (x.flatten(1).mean(1) > 0.5).float()
        t0 = torch.stack([1 - p1, p1], -1)
        return torch.stack([t0, torch.tensor([1.0, 0.0]).expand_as(t0)])

    imgs = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    correct = M.correct_per_timestep(predict, imgs, labels, batch_size=3)
    assert correct.tolist() == [[True, True, False, False], [True, False, True, False]]
    u8 = (imgs * 255).to(torch.uint8)
    cset = {"images": {"a": torch.stack([u8, 255 - u8])}, "labels": labels}  # severity 2 inverts the images
    calls = []
    grid = M.accuracy_grid(predict, cset, progress=False, reset=lambda: calls.append(1))
    assert grid.shape == (1, 2, 2) and len(calls) == 2
    assert torch.allclose(grid, torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    grid = M.accuracy_grid(lambda x: predict(x)[0], cset, progress=False)  # a plain classifier: (C, S, 1)
    assert grid.shape == (1, 2, 1)
