"""Freeze policies are pure Python: tested without any framework."""

import pytest

from transferkit import freeze
from transferkit.errors import ConfigError

G = ("stem", "stage1", "stage2", "stage3")


def trainable(plan):
    return [g for g, m in plan.items() if m]


def test_feature_extraction_freezes_everything_and_allows_caching():
    p = freeze.FeatureExtraction()
    assert trainable(p.plan(G, 0)) == [] and trainable(p.plan(G, 9)) == []
    assert p.frozen_throughout(G, 20)


def test_full_fine_tune_trains_everything():
    p = freeze.FullFineTune()
    assert p.plan(G, 0) == {g: 1.0 for g in G}
    assert not p.frozen_throughout(G, 1)


def test_train_last_counts_from_the_output_end():
    assert trainable(freeze.TrainLast(2).plan(G, 0)) == ["stage2", "stage3"]
    assert trainable(freeze.TrainLast(10).plan(G, 0)) == list(G)
    assert trainable(freeze.TrainLast(0).plan(G, 3)) == []


def test_unfreeze_at_milestone():
    p = freeze.UnfreezeAt(epoch=2, n=1)
    assert [len(trainable(p.plan(G, e))) for e in range(4)] == [0, 0, 1, 1]
    assert trainable(freeze.UnfreezeAt(1).plan(G, 1)) == list(G)
    assert not p.frozen_throughout(G, 3) and p.frozen_throughout(G, 2)


def test_gradual_unfreeze_adds_one_group_from_the_top():
    p = freeze.GradualUnfreeze()
    seq = [trainable(p.plan(G, e)) for e in range(6)]
    assert seq[0] == [] and seq[1] == ["stage3"] and seq[2] == ["stage2", "stage3"]
    assert seq[4] == list(G) and seq[5] == list(G)
    slow = freeze.GradualUnfreeze(every=2)
    assert [len(trainable(slow.plan(G, e))) for e in range(5)] == [0, 0, 1, 1, 2]


def test_layerwise_lr_decay_is_geometric_from_the_top():
    plan = freeze.FullFineTune(lr_decay=0.5).plan(G, 0)
    assert plan == {"stem": 0.0625, "stage1": 0.125, "stage2": 0.25, "stage3": 0.5}
    plan = freeze.TrainLast(2, lr_decay=0.5).plan(G, 0)
    assert plan == {"stem": 0.0, "stage1": 0.0, "stage2": 0.25, "stage3": 0.5}


@pytest.mark.parametrize(
    "bad",
    [
        lambda: freeze.TrainLast(-1),
        lambda: freeze.GradualUnfreeze(0),
        lambda: freeze.FullFineTune(lr_decay=0.0),
        lambda: freeze.UnfreezeAt(-1),
    ],
)
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        bad()


def test_from_name():
    assert freeze.from_name("gradual", every=2) == freeze.GradualUnfreeze(every=2)
    assert freeze.from_name("train-last", n=3) == freeze.TrainLast(3)
    with pytest.raises(ConfigError, match="unknown freeze policy 'thaw'"):
        freeze.from_name("thaw")
