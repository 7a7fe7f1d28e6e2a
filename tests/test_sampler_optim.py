
import pytest
import torch

from vlmkit.data.sampler import EpochIndexed, ResumableBatchSampler
from vlmkit.train.optim import learning_rate, parameter_groups
import vlmkit


def test_two_ranks_together_see_the_single_process_batches():
    single = list(ResumableBatchSampler(50, 8, seed=3, total_steps=12))
    rank0 = list(ResumableBatchSampler(50, 8, seed=3, rank=0, world_size=2, total_steps=12))
    rank1 = list(ResumableBatchSampler(50, 8, seed=3, rank=1, world_size=2, total_steps=12))
    assert [a + b for a, b in zip(rank0, rank1)] == single


def test_resumed_sampler_continues_the_same_order_across_epochs():
    full = list(ResumableBatchSampler(20, 6, seed=1, total_steps=10))  # 3 steps per epoch
    resumed = list(ResumableBatchSampler(20, 6, seed=1, start_step=4, total_steps=10))
    assert resumed == full[4:]
    epochs = {index // 20 for batch in full for index in batch}
    assert epochs == {0, 1, 2, 3}
    first_epoch = [i % 20 for batch in full[:3] for i in batch]
    assert len(set(first_epoch)) == 18  # no repeats inside an epoch


def test_sampler_needs_a_full_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(5, 8)


def test_epoch_indexed_passes_the_epoch():
    class Recorder(torch.utils.data.Dataset):
        epoch = None

        def __len__(self):
            return 10

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __getitem__(self, index):
            return (self.epoch, index)

    assert EpochIndexed(Recorder())[23] == (2, 3)


def test_warmup_then_cosine():
    assert learning_rate(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert learning_rate(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert learning_rate(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert learning_rate(100, 100, 1.0, 10, min_lr=0.1) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = vlmkit.build_model({"architecture": "clip", "vision": {"image_size": 16, "patch_size": 8, "width": 16,
                                "layers": 1, "heads": 2}, "text": {"vocab_size": 10, "context_length": 4,
                                "width": 16, "layers": 1, "heads": 2}, "embed_dim": 8})
    decay, no_decay = parameter_groups(model, 0.2)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is model.logit_scale for p in no_decay["params"])
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


def test_learning_rate_per_module_by_name_prefix():
    from torch import nn

    from vlmkit.train.optim import build_optimizer, set_learning_rate

    model = nn.ModuleDict({"visual": nn.Linear(4, 4), "connector": nn.Sequential(nn.Linear(4, 4)),
                           "language": nn.Linear(4, 4)})
    config = {"weight_decay": 0.1, "lr": 1.0, "betas": [0.9, 0.98], "eps": 1e-6,
              "lr_scales": {"visual": 0.1, "connector.0": 2.0}}
    optimizer = build_optimizer(model, config)
    set_learning_rate(optimizer, 0.5)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rate[id(model["visual"].weight)] == pytest.approx(0.05)
    assert rate[id(model["connector"][0].bias)] == pytest.approx(1.0)
    assert rate[id(model["language"].weight)] == pytest.approx(0.5)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay[id(model["visual"].weight)] == 0.1 and decay[id(model["visual"].bias)] == 0.0
    with pytest.raises(ValueError, match="names no parameters"):
        build_optimizer(model, {**config, "lr_scales": {"vision": 0.1}})
