"""Bootstrap intervals on AP differences: exact AP against pycocotools, a hand-computed
bootstrap distribution, and the verdict rule."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from dynrcnn.evaluation.coco_eval import coco_metrics
from dynrcnn.evaluation.seed_intervals import verdict
from dynrcnn.evaluation.stats import ap_samples, bootstrap_delta, image_matches, image_weights, weighted_ap


def make_gt(images):
    """``images``: list of lists of (category, [x, y, w, h])."""
    anns, imgs = [], []
    for i, objs in enumerate(images, start=1):
        imgs.append({"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"})
        for cat, b in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": list(b),
                         "area": b[2] * b[3], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": imgs, "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def random_case(seed, n_images=12):
    rng = np.random.default_rng(seed)
    images, dets = [], []
    for i in range(n_images):
        objs = []
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(8, 40, 2)
            objs.append((int(rng.integers(1, 3)), [float(x), float(y), float(w), float(h)]))
        images.append(objs)
        for cat, (x, y, w, h) in objs:
            if rng.random() < 0.85:  # a detection with some localisation error
                jit = rng.normal(0, 2.5, 4)
                dets.append({"image_id": i + 1, "category_id": cat if rng.random() < 0.9 else 3 - cat,
                             "bbox": [x + jit[0], y + jit[1], max(2.0, w + jit[2]), max(2.0, h + jit[3])],
                             "score": float(rng.uniform(0.05, 1))})
        for _ in range(rng.integers(0, 3)):  # false positives
            dets.append({"image_id": i + 1, "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(v) for v in rng.uniform(0, 60, 2)] + [10.0, 10.0],
                         "score": float(rng.uniform(0.05, 1))})
    return images, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_equal_pycocotools(seed):
    images, dets = random_case(seed)
    gt = make_gt(images)
    ours = weighted_ap(image_matches(gt, dets), np.ones(len(images)))[0]
    ref = coco_metrics(gt, dets, evaluator="pycocotools")["AP_per_iou"]
    assert ours == pytest.approx(ref, abs=1e-9)


def test_integer_weights_equal_duplicated_images():
    images, dets = random_case(5, n_images=6)
    weights = np.array([2, 0, 1, 3, 1, 0])
    ours = weighted_ap(image_matches(make_gt(images), dets), weights[None, :])[0]
    assert ours == pytest.approx(duplicated_ap(images, dets, weights), abs=1e-9)


def duplicated_ap(images, dets, weights):
    """pycocotools' AP per IoU threshold on the image multiset ``weights`` (image i ``weights[i]`` times)."""
    dup_images, dup_dets = [], []
    for i, w in enumerate(weights):
        for _ in range(int(w)):
            dup_images.append(images[i])
            dup_dets += [dict(d, image_id=len(dup_images)) for d in dets if d["image_id"] == i + 1]
    return coco_metrics(make_gt(dup_images), dup_dets, evaluator="pycocotools")["AP_per_iou"]


def test_all_resamples_at_once_equal_pycocotools_row_by_row():
    # weighted_ap computes every row in one pass (no loop over rows): each row must still be
    # pycocotools' AP of its image multiset, rows where a category has no ground truth included
    images, dets = random_case(11, n_images=8)
    weights = image_weights(len(images), n_boot=6, seed=2)
    weights[0] = 0
    weights[0, 0] = len(images)  # one image drawn 8 times: some categories have no ground truth
    ours = weighted_ap(image_matches(make_gt(images), dets), weights)
    for row, w in zip(ours, weights):
        assert row == pytest.approx(duplicated_ap(images, dets, w), abs=1e-9)


def test_bootstrap_distribution_by_hand():
    # Two images, one object each. Run A finds only image 1's object; run B finds both.
    # A resample draws the images with multiplicities (2,0) p=1/4, (1,1) p=1/2, (0,2) p=1/4.
    # A's AP: 100 on (2,0); recall .5 on (1,1): precision 1 at the 51 recall points <= .5 of
    # 101 -> 5100/101; 0 on (0,2). B's AP is 100 everywhere. So B - A is 0, 100 - 5100/101 =
    # 49.50..., 100 with probabilities 1/4, 1/2, 1/4, and the point estimate is 49.50...
    gt = make_gt([[(1, [10, 10, 30, 30])], [(1, [50, 50, 30, 30])]])
    det1 = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9}
    det2 = {"image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "score": 0.8}
    a = {0: image_matches(gt, [det1])}
    b = {0: image_matches(gt, [det1, det2])}
    d = bootstrap_delta(a, b, n_boot=4000, seed=3)
    mid = 100 - 5100 / 101
    est, low, high = d.metrics["AP50"]
    assert est == pytest.approx(mid)
    assert (low, high) == (pytest.approx(0.0), pytest.approx(100.0))
    assert d.per_iou == pytest.approx([mid] * 10)
    # a 40 % interval (percentiles 30 and 70) falls inside the middle half of the distribution,
    # which is all the (1, 1) draw: both ends are 100 - 5100/101
    d40 = bootstrap_delta(a, b, n_boot=4000, seed=3, level=0.4)
    assert d40.metrics["AP50"][1:] == (pytest.approx(mid), pytest.approx(mid))


def test_seed_level_is_resampled_and_paired():
    # identical runs on both sides: every replicate difference is exactly 0
    images, dets = random_case(7)
    gt = make_gt(images)
    m = image_matches(gt, dets)
    d = bootstrap_delta({0: m, 1: m}, {0: m, 1: m}, n_boot=200)
    assert d.paired_seeds and d.metrics["AP"] == (0.0, 0.0, 0.0)
    # B = A with one perfect seed and one useless seed; A perfect on both: B - A in {0, -50, -100}
    perfect = [{"image_id": i + 1, "category_id": c, "bbox": b, "score": 0.9}
               for i, objs in enumerate(images) for c, b in objs]
    good, none = image_matches(gt, perfect), image_matches(gt, [])
    d = bootstrap_delta({0: good, 1: good}, {0: good, 1: none}, n_boot=2000, seed=1)
    est, low, high = d.metrics["AP"]
    assert est == pytest.approx(-50.0) and low == pytest.approx(-100.0) and high == pytest.approx(0.0)


def test_precomputed_samples_give_the_same_interval():
    # each run's samples computed once (as the report caches them) = samples made inside
    images, dets = random_case(5)
    gt = make_gt(images)
    m1, m2 = image_matches(gt, dets), image_matches(gt, dets[: len(dets) // 2])
    direct = bootstrap_delta({0: m1, 1: m2}, {0: m2, 1: m1}, n_boot=300, seed=4)
    cached = bootstrap_delta({0: ap_samples(m1, 300, 4), 1: ap_samples(m2, 300, 4)},
                             {0: ap_samples(m2, 300, 4), 1: m1}, n_boot=300, seed=4)
    assert cached.metrics == direct.metrics and np.array_equal(cached.per_iou_low, direct.per_iou_low)
    with pytest.raises(ValueError, match="n_boot=300, seed=4"):  # samples of other draws are refused
        bootstrap_delta({0: ap_samples(m1, 300, 5)}, {0: m2}, n_boot=300, seed=4)


def test_runs_on_other_images_are_refused():
    m1 = image_matches(make_gt([[(1, [0, 0, 10, 10])]]), [])
    m2 = image_matches(make_gt([[(1, [0, 0, 10, 10])], []]), [])
    with pytest.raises(ValueError, match="same images"):
        bootstrap_delta({0: m1}, {0: m2}, n_boot=10)


@pytest.mark.parametrize("low,high,sign,status", [
    (0.2, 1.5, 1, "reproduced"),
    (-1.5, -0.2, 1, "contradicted"),
    (-0.2, 1.5, 1, "inconclusive"),
    (0.0, 1.5, 1, "inconclusive"),
    (-1.5, -0.2, -1, "reproduced"),
    (0.2, 1.5, -1, "contradicted"),
])
def test_verdict_rule(low, high, sign, status):
    assert verdict(low, high, sign) == status


def test_contrast_of_two_differences_is_exact_on_shifted_samples():
    """Difference of two gains (implementation 2's gain minus implementation 1's): equal gains give
    exactly 0 with the interval [0, 0]; a gain larger by c on every image resample gives c."""
    from dynrcnn.evaluation.stats import APSamples, bootstrap_contrast

    rng = np.random.default_rng(0)

    def samples(shift=0.0):
        full, boot = rng.random(10) * 50, rng.random((300, 10)) * 50
        return {s: APSamples(list(range(30)), full + shift + s, boot + shift + s, 300, 0) for s in (0, 1, 2)}

    base = samples()
    dyn = {s: APSamples(v.image_ids, v.full + 3.0, v.boot + 3.0, 300, 0) for s, v in base.items()}
    same = bootstrap_contrast([base, dyn, base, dyn], [1, -1, -1, 1], n_boot=300)
    assert same.metrics["AP"] == (0.0, 0.0, 0.0) and same.paired_seeds
    bigger = {s: APSamples(v.image_ids, v.full + 1.5, v.boot + 1.5, 300, 0) for s, v in dyn.items()}
    d = bootstrap_contrast([base, dyn, base, bigger], [1, -1, -1, 1], n_boot=300)
    for est, lo, hi in d.metrics.values():
        assert est == pytest.approx(1.5) and lo == pytest.approx(1.5) and hi == pytest.approx(1.5)
    with pytest.raises(ValueError, match="one weight per group"):
        bootstrap_contrast([base, dyn], [1], n_boot=300)
