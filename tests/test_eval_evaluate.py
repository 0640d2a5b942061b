"""evaluate(): the confusion matrix of a whole split, in one process or summed over a sharded process group."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

import methods  # noqa: F401  (registers the training methods: the spawned workers load configs too)
from eval.evaluate import build_eval_loader, collate_by_size, evaluate, metrics_table
from eval.metrics import ConfusionMatrix
from util.config import Config

NCLASS = 7
SIZES = [(28, 42), (14, 28), (28, 42), (17, 23), (28, 42)]


def make_split() -> list[dict]:
    """Five validation items of three sizes, with some ignore pixels."""
    g = torch.Generator().manual_seed(1)
    items = []
    for i, (h, w) in enumerate(SIZES):
        mask = torch.randint(0, NCLASS, (h, w), generator=g)
        mask[0, :3] = 255
        items.append({"img": torch.randn(3, h, w, generator=g), "mask": mask, "name": f"tile_{i}"})
    return items


def make_model() -> torch.nn.Module:
    """A per-pixel linear classifier: its prediction does not depend on windows or batching."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, NCLASS, 1)


def make_cfg(mode: str) -> Config:
    return Config().replace({"train.num_workers": 0, "eval.mode": mode, "eval.window": 14, "eval.stride": 9,
                             "eval.batch_size": 4})


def expected_matrix(items, model) -> torch.Tensor:
    cm = ConfusionMatrix(NCLASS)
    with torch.no_grad():
        for item in items:
            cm.update(model(item["img"][None]).argmax(1)[0], item["mask"])
    return cm.mat


def test_collate_groups_items_by_image_size():
    batches = collate_by_size(make_split()[:3])
    assert [b["img"].shape for b in batches] == [(2, 3, 28, 42), (1, 3, 14, 28)]
    assert batches[0]["name"] == ["tile_0", "tile_2"] and batches[0]["mask"].shape == (2, 28, 42)


def test_sliding_window_evaluation_counts_every_pixel_of_the_split():
    items, model = make_split(), make_model()
    cfg = make_cfg("sliding_window")
    result = evaluate(model, build_eval_loader(items, cfg), cfg, torch.device("cpu"))
    assert torch.equal(torch.tensor(result["confusion_matrix"]), expected_matrix(items, model))
    assert result["pixels"] == sum(h * w - 3 for h, w in SIZES)


def test_original_mode_batches_same_size_images():
    items = [it for it in make_split() if it["img"].shape[-1] % 14 == 0]
    model = make_model()
    cfg = make_cfg("original")
    result = evaluate(model, build_eval_loader(items, cfg), cfg, torch.device("cpu"))
    assert torch.equal(torch.tensor(result["confusion_matrix"]), expected_matrix(items, model))


def test_excluded_classes_follow_the_dataset_config_and_training_mode_is_restored():
    items, model = make_split(), make_model()
    cfg = make_cfg("sliding_window").replace({"dataset.eval_exclude": [6]})
    model.train()
    result = evaluate(model, build_eval_loader(items, cfg), cfg, torch.device("cpu"), max_visualize=2)
    assert result["included"] == [True] * 6 + [False] and result["iou"][6] is None
    assert model.training
    assert [s["name"] for s in result["samples"]] == ["tile_0", "tile_1"]
    assert result["samples"][0]["pred"].shape == SIZES[0]
    table = metrics_table(result, [f"c{i}" for i in range(NCLASS)])
    assert "| c6 | excluded | excluded |" in table and "mIoU" in table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    from util.dist import cleanup, init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = init_distributed()
    cfg = make_cfg("sliding_window")
    result = evaluate(make_model(), build_eval_loader(make_split(), cfg, info), cfg, info.device, info)
    torch.save({"matrix": result["confusion_matrix"], "world": info.world_size}, f"{out}/rank{rank}.pt")
    cleanup()


def test_two_process_evaluation_equals_one_process(tmp_path, monkeypatch):
    # Children must take the gloo/CPU path even on a machine with one GPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    cfg = make_cfg("sliding_window")
    single = evaluate(make_model(), build_eval_loader(make_split(), cfg), cfg, torch.device("cpu"))
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["world"] == 2
        assert saved["matrix"] == single["confusion_matrix"]


@pytest.mark.parametrize(("rank", "names"), [(0, ["tile_0", "tile_2", "tile_4"]), (1, ["tile_1", "tile_3"])])
def test_shards_are_disjoint_and_cover_the_split(rank, names):
    from util.dist import DistInfo

    info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"), is_main=rank == 0)
    cfg = make_cfg("sliding_window")
    loader = build_eval_loader(make_split(), cfg, info)
    assert [name for groups in loader for b in groups for name in b["name"]] == names


def test_single_process_needs_no_process_group(monkeypatch):
    from util import dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    info = dist.init_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True) and not dist.is_distributed()
    t = torch.ones(3)
    assert torch.equal(dist.all_reduce_sum(t), torch.ones(3))
    dist.barrier()
    dist.cleanup()
