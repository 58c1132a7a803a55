"""The data order: a seeded permutation per epoch, cut into global batches shared out over the workers."""
import numpy as np
import pytest

from training.data import DataOrder, DataOrderError


def epoch_batches(order: DataOrder, epoch: int, rank: int) -> list[list[int]]:
    first = epoch * order.batches_per_epoch
    return [order.batch(m, rank).tolist() for m in range(first, first + order.batches_per_epoch)]


def test_two_epochs_see_different_orders_and_the_same_seed_the_same_order():
    order = DataOrder(num_samples=50, world_size=1, batch_size=5, seed=7)
    assert epoch_batches(order, 0, 0) != epoch_batches(order, 1, 0)
    again = DataOrder(num_samples=50, world_size=1, batch_size=5, seed=7)
    assert [epoch_batches(again, e, 0) for e in range(3)] == [epoch_batches(order, e, 0) for e in range(3)]
    other_seed = DataOrder(num_samples=50, world_size=1, batch_size=5, seed=8)
    assert epoch_batches(other_seed, 0, 0) != epoch_batches(order, 0, 0)
    for epoch in range(3):  # every epoch is a permutation: each sample once
        assert sorted(sum(epoch_batches(order, epoch, 0), [])) == list(range(50))


def test_workers_share_each_epoch_without_overlap_and_drop_the_same_short_tail():
    order = DataOrder(num_samples=23, world_size=2, batch_size=3, seed=0)
    assert order.batches_per_epoch == 3  # 23 // 6: 5 samples of each epoch left out
    for epoch in range(4):
        seen = [i for rank in (0, 1) for batch in epoch_batches(order, epoch, rank) for i in batch]
        assert len(seen) == len(set(seen)) == 18
        assert set(order.permutation(epoch)[:18]) == set(seen)  # the tail of the permutation is what is left out
    # global batch k = rank 0's batch k then rank 1's: one worker with twice the batch sees the same samples
    single = DataOrder(num_samples=23, world_size=1, batch_size=6, seed=0)
    assert order.batch(4, 0).tolist() + order.batch(4, 1).tolist() == single.batch(4, 0).tolist()


def test_micro_batch_numbers_run_across_epochs():
    order = DataOrder(num_samples=10, world_size=1, batch_size=3, seed=0)
    assert [order.locate(m) for m in (0, 2, 3, 8)] == [(0, 0), (0, 2), (1, 0), (2, 2)]
    assert order.batch(8, 0).tolist() == order.permutation(2)[6:9].tolist()


def test_no_shuffle_keeps_the_file_order():
    order = DataOrder(num_samples=8, world_size=2, batch_size=2, seed=0, shuffle=False)
    assert [order.batch(m, r).tolist() for m in (0, 1) for r in (0, 1)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert np.array_equal(order.batch(2, 0), [0, 1])  # the next epoch starts over, in the same order


def test_too_few_samples_for_one_batch_per_worker_is_refused():
    with pytest.raises(DataOrderError, match="7 samples cannot fill one batch of 4 on each of 2 worker"):
        DataOrder(num_samples=7, world_size=2, batch_size=4, seed=0)
