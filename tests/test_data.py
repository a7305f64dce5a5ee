"""Dataset loading: target format, crowd/degenerate/empty handling, errors, flip, sampler, loaders."""

import itertools
import json
import logging

import pytest
import torch

from dynrcnn.data.datasets import CocoDetection, TrainSampler, build_eval_loader, build_train_loader, collate, load_dataset, split_names
from dynrcnn.errors import DataError
from tests.fixtures.data_helpers import simple_dataset, write_dataset


@pytest.fixture()
def simple(tmp_path):
    simple_dataset(tmp_path, "train")
    return tmp_path


# ------------------------------------------------------------------------------------------- targets

def test_target_format_and_label_mapping(simple):
    ds = CocoDetection(simple, "train", train=True)
    assert ds.cat_ids == [3, 7, 10]
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 10}
    assert ds.class_names == ["cat", "dog", "bird"]
    assert ds.num_classes == 4
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 64)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["image_id"] == 101 and isinstance(target["image_id"], int)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # xywh -> xyxy, crowd box left out, labels contiguous
    assert target["boxes"].tolist() == [[4, 6, 14, 14], [30, 20, 50, 32]]
    assert target["labels"].tolist() == [1, 3]
    assert target["area"].shape == (2,) and target["iscrowd"].tolist() == [0, 0]
    assert ds.annotation_file == simple / "annotations" / "instances_train.json"
    assert ds.coco.getImgIds() == [101, 102, 103, 104]


def test_crowd_degenerate_and_empty_images(simple, caplog):
    with caplog.at_level(logging.WARNING):
        train = CocoDetection(simple, "train", train=True)
    assert train.dropped_boxes == 2 and train.crowd_boxes == 2
    assert "dropped 2 degenerate" in caplog.text
    # 102 has only crowd/degenerate boxes, 103 none: excluded from training
    assert train.image_ids == [101, 104] and len(train) == 2
    _, t = train[1]
    assert t["boxes"].tolist() == [[20, 50, 32, 60]]  # clipped to the image
    evalset = CocoDetection(simple, "train", train=False)
    assert evalset.image_ids == [101, 102, 103, 104] and len(evalset) == 4
    _, t = evalset[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_aspect_ratios_from_json(simple):
    ds = CocoDetection(simple, "train", train=False)
    assert ds.aspect_ratios() == pytest.approx([64 / 48] * 3 + [32 / 60])


def test_flip_moves_boxes_with_the_image(simple):
    ds = CocoDetection(simple, "train", train=True)
    for idx in range(len(ds)):
        image, target = ds[(idx, False)]
        fimage, ftarget = ds[(idx, True)]
        assert torch.equal(fimage, image.flip(-1))
        w = image.shape[-1]
        for box, fbox in zip(target["boxes"].tolist(), ftarget["boxes"].tolist()):
            assert fbox == [w - box[2], box[1], w - box[0], box[3]]
            # the white object is where the flipped box says
            x0, y0, x1, y1 = (int(v) for v in fbox)
            assert float(fimage[:, y0:y1, x0:x1].min()) == 1.0
        assert torch.equal(ftarget["labels"], target["labels"])
    # plain int keys never flip
    assert torch.equal(ds[0][0], ds[(0, False)][0])


# -------------------------------------------------------------------------------------------- errors

def _expect_error(path, *parts):
    with pytest.raises(DataError) as e:
        CocoDetection(path.parent.parent, "train")
    msg = str(e.value)
    assert str(path) in msg
    for p in parts:
        assert p in msg, msg
    return msg


def _mutate(tmp_path, fn):
    ann = simple_dataset(tmp_path, "train")
    data = json.loads(ann.read_text())
    fn(data)
    ann.write_text(json.dumps(data))
    return ann


def test_bad_json(tmp_path):
    ann = simple_dataset(tmp_path, "train")
    ann.write_text('{"images": [')
    _expect_error(ann, "not valid JSON", "line 1")


def test_missing_top_level_key(tmp_path):
    ann = _mutate(tmp_path, lambda d: d.pop("categories"))
    _expect_error(ann, "missing top-level key 'categories'")


def test_annotation_missing_key(tmp_path):
    ann = _mutate(tmp_path, lambda d: d["annotations"][3].pop("bbox"))
    _expect_error(ann, "annotations[3] (id 4)", "missing key 'bbox'")


def test_bbox_wrong_length(tmp_path):
    ann = _mutate(tmp_path, lambda d: d["annotations"][1].__setitem__("bbox", [1, 2, 3]))
    _expect_error(ann, "annotations[1] (id 2)", "4 numbers")


def test_negative_box_size(tmp_path):
    ann = _mutate(tmp_path, lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, -3, 4]))
    _expect_error(ann, "annotations[0] (id 1)", "negative")


def test_unknown_category(tmp_path):
    ann = _mutate(tmp_path, lambda d: d["annotations"][2].__setitem__("category_id", 99))
    _expect_error(ann, "annotations[2] (id 3)", "unknown category_id 99")


def test_unknown_image_id(tmp_path):
    ann = _mutate(tmp_path, lambda d: d["annotations"][4].__setitem__("image_id", 555))
    _expect_error(ann, "annotations[4] (id 5)", "unknown image_id 555")


def test_image_missing_key(tmp_path):
    ann = _mutate(tmp_path, lambda d: d["images"][2].pop("width"))
    _expect_error(ann, "images[2] (id 103)", "'width'")


def test_missing_image_file(tmp_path):
    ann = simple_dataset(tmp_path, "train")
    (tmp_path / "train" / "103.png").unlink()
    _expect_error(ann, "images[2] (id 103)", "'103.png'", "missing")


def test_unreadable_image_file_at_load_time(tmp_path):
    simple_dataset(tmp_path, "train")
    (tmp_path / "train" / "101.png").write_bytes(b"not a png")
    ds = CocoDetection(tmp_path, "train")
    with pytest.raises(DataError, match="101.png"):
        ds[0]


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="instances_val.json does not exist"):
        CocoDetection(tmp_path, "val")


def test_split_names_and_load_dataset(tmp_path):
    with pytest.raises(DataError, match="dynrcnn data mini"):
        split_names(tmp_path)
    simple_dataset(tmp_path / "a", "train")
    assert split_names(tmp_path / "a") == ("train", "val")
    simple_dataset(tmp_path / "b", "train2017")
    assert split_names(tmp_path / "b") == ("train2017", "val2017")
    ds = load_dataset(tmp_path / "b", "train", train=False)
    assert ds.split == "train2017" and len(ds) == 4


# ------------------------------------------------------------------------------------------- sampler

RATIOS = [1.5, 0.7, 1.0, 0.5, 1.3, 1.33, 0.75, 2.0, 1.0, 0.6, 1.1, 0.9, 1.4]


def _take(it, n):
    return list(itertools.islice(it, n))


def test_sampler_is_deterministic_and_grouped():
    a = _take(iter(TrainSampler(RATIOS, 2, seed=5)), 40)
    b = _take(iter(TrainSampler(RATIOS, 2, seed=5)), 40)
    c = _take(iter(TrainSampler(RATIOS, 2, seed=6)), 40)
    assert a == b and a != c
    for batch in a:
        assert len(batch) == 2
        assert len({RATIOS[i] >= 1 for i, _ in batch}) == 1  # one aspect group per batch
        assert all(isinstance(f, bool) for _, f in batch)
    flips = [f for batch in a for _, f in batch]
    assert 0.2 < sum(flips) / len(flips) < 0.8
    none = _take(iter(TrainSampler(RATIOS, 2, seed=5, hflip_prob=0.0)), 20)
    assert not any(f for batch in none for _, f in batch)


@pytest.mark.parametrize("k", [0, 1, 7, 23])
def test_sampler_resume_equals_skipping(k):
    s = TrainSampler(RATIOS, 3, seed=1)
    fresh = _take(s.iter_from(0), k + 10)
    assert _take(s.iter_from(k), 10) == fresh[k:]
    assert _take(iter(TrainSampler(RATIOS, 3, seed=1, start_batch=k)), 10) == fresh[k:]


def test_sampler_ranks_are_disjoint_and_cover_an_epoch():
    n = len(RATIOS)
    ws = 3
    per_rank = [[i for b in _take(iter(TrainSampler(RATIOS, 1, seed=2, rank=r, world_size=ws)), len(range(r, n, ws)))
                 for i, _ in b] for r in range(ws)]
    flat = [i for r in per_rank for i in r]
    assert sorted(flat) == list(range(n))  # disjoint, and together one full epoch
    # the stream of a rank is a pure function of (seed, rank, world_size)
    again = _take(iter(TrainSampler(RATIOS, 1, seed=2, rank=1, world_size=ws)), 4)
    assert [b[0][0] for b in again] == per_rank[1][:4]
    with pytest.raises(ValueError):
        TrainSampler(RATIOS, 1, seed=0, rank=3, world_size=3)


def test_epoch_permutation_uses_seed_plus_epoch():
    s = TrainSampler([1.0] * 6, 1, seed=10, hflip_prob=0.0)
    first = [b[0][0] for b in _take(iter(s), 12)]
    assert first[:6] == torch.randperm(6, generator=torch.Generator().manual_seed(10)).tolist()
    assert first[6:] == torch.randperm(6, generator=torch.Generator().manual_seed(11)).tolist()


# ------------------------------------------------------------------------------------------- loaders

def _grid_dataset(root, n=10):
    images = [{"id": i + 1, "width": 40 if i % 3 else 24, "height": 30} for i in range(n)]
    anns = [{"image_id": i + 1, "category_id": 3 + 4 * (i % 2), "bbox": [2, 3, 8 + i, 9]} for i in range(n)]
    write_dataset(root, "train", images, anns)
    return CocoDetection(root, "train")


def test_train_loader_is_infinite_and_resumes_exactly(tmp_path):
    ds = _grid_dataset(tmp_path)
    fresh = build_train_loader(ds, batch_size=2, seed=3, num_workers=0)
    batches = _take(iter(fresh), 12)  # more than an epoch
    assert all(len(images) == 2 and len(targets) == 2 for images, targets in batches)
    ids = [[t["image_id"] for t in targets] for _, targets in batches]
    resumed = build_train_loader(ds, batch_size=2, seed=3, start_batch=5, num_workers=0)
    rids = [[t["image_id"] for t in targets] for _, targets in _take(iter(resumed), 7)]
    assert rids == ids[5:12]
    # images and boxes equal too (flips included)
    rb = _take(iter(resumed), 1)[0]
    assert all(torch.equal(a, b) for a, b in zip(rb[0], batches[5][0]))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(rb[1], batches[5][1]))


def test_train_loader_with_worker_processes(tmp_path):
    ds = _grid_dataset(tmp_path)
    a = _take(iter(build_train_loader(ds, batch_size=2, seed=4, num_workers=0)), 4)
    b = _take(iter(build_train_loader(ds, batch_size=2, seed=4, num_workers=1)), 4)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(ia, ib))
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]


def test_eval_loader_covers_every_image(simple):
    ds = CocoDetection(simple, "train", train=False)
    seen = [t["image_id"] for _, targets in build_eval_loader(ds, batch_size=3, num_workers=0) for t in targets]
    assert seen == [101, 102, 103, 104]


def test_collate():
    images, targets = collate([(1, {"a": 1}), (2, {"a": 2})])
    assert images == [1, 2] and targets == [{"a": 1}, {"a": 2}]


# ------------------------------------------------------------------------------------------- stats

def test_dataset_statistics_and_plots(simple):
    import matplotlib.figure

    from dynrcnn.data.datastats import dataset_statistics
    from dynrcnn.report.plots import draw_samples, plot_box_size_histogram

    s = dataset_statistics(simple / "annotations" / "instances_train.json")
    assert s["images"] == 4 and s["instances"] == 5 and s["crowd"] == 2 and s["classes"] == 3
    assert s["per_class"]["instances"].tolist() == [1, 3, 1]
    assert s["instances_per_image"]["images"].tolist() == [1, 1, 2]  # 0, 1 and 2 objects
    assert s["sizes"] == {"small": 5, "medium": 0, "large": 0}
    ds = CocoDetection(simple, "train", train=False)
    assert dataset_statistics(ds)["instances"] == 5
    assert isinstance(plot_box_size_histogram(s), matplotlib.figure.Figure)
    fig = draw_samples(ds, n=3, seed=0, cols=3)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3


def test_size_shares_and_their_sentence_are_computed():
    from dynrcnn.data import mini
    from dynrcnn.data.datastats import LARGE_MIN_SHARE, SMALL_MAX_SHARE, dataset_statistics, size_sentence

    # the image-scaled limits are the generator's bands
    small, medium, _ = mini._area_bands(128)
    assert small[1] == pytest.approx(SMALL_MAX_SHARE * 128 ** 2) and medium[1] == pytest.approx(LARGE_MIN_SHARE * 128 ** 2)

    def split(areas, size=128):
        return {"images": [{"id": 1, "width": size, "height": size}], "categories": [{"id": 1, "name": "a"}],
                "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, a], "area": a,
                                 "iscrowd": 0} for i, a in enumerate(areas)]}

    # 128 px: 400 and 100 small either way; 2000 medium either way; 5000 medium by COCO's pixels, large scaled
    s = dataset_statistics(split([100, 400, 2000, 5000]))
    assert s["sizes"] == {"small": 2, "medium": 2, "large": 0}
    assert s["relative_sizes"] == {"small": 2, "medium": 1, "large": 1}
    text = size_sentence(s, "the training split")
    assert text.startswith("Of the training split's objects, 50 % are small, 50 % medium and 0 % large by COCO's")
    assert "no object is large by them, so AP_L has nothing to score" in text and "represented" not in text
    assert text.endswith("50 % are small, 25 % medium and 25 % large.")
    # 640 px: the scaled limits are COCO's, every range holds an object, one sentence
    s = dataset_statistics(split([100, 2000, 10000], size=640))
    assert s["relative_sizes"] == s["sizes"] == {"small": 1, "medium": 1, "large": 1}
    assert size_sentence(s).endswith("33 % large by COCO's pixel limits (area < 32² px small, ≥ 96² px large: "
                                     "what AP_S / AP_M / AP_L score), so all three of COCO's size ranges are "
                                     "represented.")
