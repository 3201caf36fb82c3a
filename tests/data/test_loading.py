import torch

from simclr.config import AugmentConfig
from simclr.data.datasets import build_dataset
from simclr.data.loading import epoch_batches, eval_batches, train_batches

from ..conftest import write_image_folder


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = epoch_batches(10, 3, seed=0, epoch=0)
    assert len(a) == 3 and all(len(b) == 3 for b in a)  # the incomplete batch is dropped
    assert len(set(torch.cat(a).tolist())) == 9
    assert all(
        torch.equal(x, y) for x, y in zip(a, epoch_batches(10, 3, seed=0, epoch=0), strict=True)
    )
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(10, 3, seed=0, epoch=1)))
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(10, 3, seed=1, epoch=0)))


def test_resuming_mid_epoch_gives_the_remaining_batches(image_folder):
    data = build_dataset(str(image_folder), size=16)
    cfg = AugmentConfig(size=16)
    full = [b for b, _ in train_batches(data, cfg, batch_size=5, seed=3, epoch=2)]
    rest = [b for b, _ in train_batches(data, cfg, batch_size=5, seed=3, epoch=2, start=2)]
    assert len(full) == 4 and len(rest) == 2
    assert all(torch.equal(x, y) for x, y in zip(full[2:], rest, strict=True))


def test_file_datasets_yield_two_crops_per_image(tmp_path):
    root = write_image_folder(tmp_path / "big", classes=2, per_class=3, size=70)
    data = build_dataset(str(root), size=24)
    (root / "class_1" / "bad.jpg").write_bytes(b"xx")
    data = build_dataset(str(root), size=24)
    batches = list(
        train_batches(data, AugmentConfig(size=24), batch_size=7, seed=0, epoch=0, num_workers=0)
    )
    images, skipped = batches[0]
    assert images.shape == (6, 2, 3, 24, 24) and images.dtype == torch.uint8 and skipped == 1
    evaluated = list(eval_batches(data, size=24, batch_size=4, num_workers=0))
    index = torch.cat([i for _, _, i in evaluated])
    labels = torch.cat([y for _, y, _ in evaluated])
    assert sum(len(x) for x, _, _ in evaluated) == 6 and len(index) == 6
    bad = data.names.index(str(root / "class_1" / "bad.jpg"))
    assert bad not in index.tolist()  # the unreadable file is dropped, the rest stay aligned
    assert torch.equal(labels, data.labels[index])


def test_processes_split_each_global_batch_of_the_one_process_order():
    whole = epoch_batches(20, 8, seed=4, epoch=1)
    parts = [epoch_batches(20, 8, seed=4, epoch=1, rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(whole):
        assert [len(p[step]) for p in parts] == [4, 4]
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), batch)


def test_eval_shards_cover_every_item_once(image_folder):
    data = build_dataset(str(image_folder), size=16)  # 24 images, in memory
    shards = [
        torch.cat([i for _, _, i in eval_batches(data, size=16, batch_size=5, shard=(r, 3))])
        for r in range(3)
    ]
    assert sorted(torch.cat(shards).tolist()) == list(range(len(data)))
