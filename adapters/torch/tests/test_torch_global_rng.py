"""Stages and zoo builds never change torch's global random stream (issue 13, class 7): a user's other code that
draws from torch's RNG gets the same numbers whether or not unicompress ran in between."""
import torch

from unicompress.conformance.cases import task_data
from unicompress.specs import FineTuneSpec, TrainingSpec
from unicompress_torch.backend import TorchAdapter

A = TorchAdapter()


def test_fine_tuning_and_building_leave_the_global_rng_as_it_was():
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    model = A.build_model("tiny-bert", seed=0)
    A.apply(model, FineTuneSpec(training=TrainingSpec(steps=3, batch_size=4, seed=7)), task_data("tiny-bert"))
    assert torch.equal(torch.rand(4), expected)


def test_the_training_seed_still_decides_the_result():
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = A.build_model("tiny-bert", seed=0)
        out = A.apply(model, FineTuneSpec(training=TrainingSpec(steps=3, batch_size=4, seed=7)), task_data("tiny-bert"))
        runs.append(A.weights(out))
    assert all(torch.equal(torch.from_numpy(runs[0][k]), torch.from_numpy(runs[1][k])) for k in runs[0])
