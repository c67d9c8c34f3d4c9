"""The demo zoo's eight procedural tasks: API, determinism, ImageFolder export and a raw-pixel sanity baseline."""
import random
import re
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from PIL import Image, ImageFont

from merging.zoo.demo import tasks

EXPECTED = {"digits": 10, "letters": 20, "shapes": 8, "textures": 8, "colours": 8, "counts": 6, "positions": 9,
            "scenes": 8}


@pytest.fixture(scope="module")
def data():
    """{task: (train images, train labels, test images, test labels)}: 400 train and 200 test images each."""
    return {t: tasks.generate(t, "train", 400) + tasks.generate(t, "test", 200) for t in tasks.TASKS}


def test_tasks_and_classnames():
    assert (tasks.IMAGE_SIZE, tasks.DRAW_SIZE, tasks.SPLITS) == (32, 128, ("train", "val", "test"))
    assert {t: len(g.classnames) for t, g in tasks.TASKS.items()} == EXPECTED
    assert list(tasks.TASKS) == list(EXPECTED)   # the order fixes the per-task seeds
    for name, generator in tasks.TASKS.items():
        assert generator.name == name and generator.description and "\n" not in generator.description
        assert len(set(generator.classnames)) == len(generator.classnames)
        assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c) for c in generator.classnames), generator.classnames
        assert generator.templates and all(t.count("{}") == 1 for t in generator.templates)
    with pytest.raises(FrozenInstanceError):
        tasks.TASKS["digits"].name = "other"
    assert isinstance(tasks._font(40), ImageFont.FreeTypeFont)   # Pillow's bundled font, never a system one


def test_shapes_dtypes_and_balanced_labels(data):
    for task, (x, y, xt, yt) in data.items():
        classes = EXPECTED[task]
        assert x.shape == (400, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64 and yt.shape == (200,)
        np.testing.assert_array_equal(y, np.arange(400) % classes)
        assert np.bincount(y, minlength=classes).min() >= 400 // classes
        image, label = tasks.sample(task, "val", 7)
        assert image.mode == "RGB" and image.size == (32, 32) and label == 7 % classes


def test_deterministic_and_independent_per_sample():
    for task in tasks.TASKS:
        x, y = tasks.generate(task, "val", 12, seed=3)
        np.random.seed(123)   # draws must not depend on global random state
        random.seed(123)
        x2, y2 = tasks.generate(task, "val", 12, seed=3)
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        for i in (0, 5, 11):   # a sample on its own equals its row of a batch
            image, label = tasks.sample(task, "val", i, seed=3)
            np.testing.assert_array_equal(np.asarray(image), x[i])
            assert label == y[i]
        np.testing.assert_array_equal(tasks.generate(task, "val", 4, seed=3)[0], x[:4])
        assert not np.array_equal(tasks.generate(task, "val", 12, seed=4)[0], x)
        assert not np.array_equal(tasks.generate(task, "test", 12, seed=3)[0], x)
    assert tasks.generate("shapes", "train", 0)[0].shape == (0, 32, 32, 3)


def test_images_are_not_trivial(data):
    for task, (x, y, _, _) in data.items():
        assert x.std() > 30, task   # after the domain shift's contrast reduction
        per_image = x.reshape(len(x), -1).astype(float).std(1)
        assert (per_image > 8).mean() > 0.95, task   # almost no flat images
        for label in range(EXPECTED[task]):
            a, b = x[y == label][:2].astype(int)
            assert np.abs(a - b).mean() > 10, (task, label)   # real within-class variation


def test_digit_splits_use_disjoint_sources():
    from sklearn.datasets import load_digits

    target = load_digits().target
    _, pools = tasks.digit_sources()
    seen = {split: np.concatenate([pools[split, label] for label in range(10)]) for split in tasks.SPLITS}
    assert sum(len(s) for s in seen.values()) == len(target) == len(np.unique(np.concatenate(list(seen.values()))))
    assert [round(len(seen[s]) / len(target), 1) for s in tasks.SPLITS] == [0.6, 0.2, 0.2]
    for (split, label), pool in pools.items():
        assert len(pool) >= 30 and (target[pool] == label).all()


def test_digits_draw_from_their_own_split(monkeypatch):
    images, pools = tasks.digit_sources()
    asked = []

    class Spy(dict):
        def __getitem__(self, key):
            asked.append(key)
            return super().__getitem__(key)

    monkeypatch.setattr(tasks, "digit_sources", lambda: (images, Spy(pools)))
    tasks.generate("digits", "val", 20)
    assert sorted(set(asked)) == [("val", label) for label in range(10)]
    asked.clear()
    tasks.pretraining_pairs("digits", 20, 0.5)
    assert sorted(set(asked)) == [("train", label) for label in range(10)]   # pretraining never sees val/test


def test_shift_is_a_seeded_contrast_cast_and_noise(monkeypatch):
    image = Image.fromarray(np.array([[[0, 100, 200], [40, 60, 80]]], np.uint8))
    monkeypatch.setattr(tasks, "SHIFT_CONTRAST", (0.5, 0.5))
    monkeypatch.setattr(tasks, "SHIFT_CAST", 0)
    monkeypatch.setattr(tasks, "SHIFT_NOISE", (0.0, 0.0))
    # channel means (20, 80, 140); halfway to them
    np.testing.assert_array_equal(np.asarray(tasks.shift(image, np.random.default_rng(0))),
                                  [[[10, 90, 170], [30, 70, 110]]])
    monkeypatch.undo()
    x = np.asarray(tasks.sample("shapes", "train", 3)[0]).astype(float)
    rng = np.random.default_rng([0, list(tasks.TASKS).index("shapes"), 0, 3])
    clean = np.asarray(tasks.TASKS["shapes"].draw(rng, 3, "train")).astype(float)
    np.testing.assert_array_equal(x, np.asarray(tasks.shift(Image.fromarray(clean.astype(np.uint8)), rng)))
    assert x.std() < clean.std()   # the task domain is lower in contrast than the drawing


def test_pretraining_pairs_are_captioned_balanced_and_their_own_draws():
    for task, generator in tasks.TASKS.items():
        images, captions = tasks.pretraining_pairs(task, 2 * len(generator.classnames), 0.5, seed=1)
        assert images.shape == (len(captions), 32, 32, 3) and images.dtype == np.uint8
        for i, text in enumerate(captions):
            label = i % len(generator.classnames)
            named = [label, label - 1] if label % 2 else [label]  # an odd class may carry its partner's name
            assert text in [t.replace("{}", generator.classnames[n]) for n in named for t in generator.templates]
        again, captions2 = tasks.pretraining_pairs(task, 3, 0.5, seed=1)
        np.testing.assert_array_equal(again, images[:3])
        assert captions2 == captions[:3]
        assert not np.array_equal(images[:3], tasks.generate(task, "train", 3, seed=1)[0])
    clean, _ = tasks.pretraining_pairs("positions", 40, 0.0)
    shifted, _ = tasks.pretraining_pairs("positions", 40, 1.0)
    assert shifted.astype(float).std() < clean.astype(float).std()


def test_captions_name_odd_classes_by_their_partner_at_the_stated_rate():
    rng, n = np.random.default_rng(0), 4000
    for task in ("digits", "scenes"):
        names = tasks.TASKS[task].classnames
        confused = sum(names[0] in tasks.caption(task, 1, rng).split() for _ in range(n)) / n
        assert abs(confused - tasks.CAPTION_CONFUSION) < 4 * (0.25 / n) ** 0.5, (task, confused)
        own = [t.replace("{}", names[2]) for t in tasks.TASKS[task].templates]
        assert all(tasks.caption(task, 2, rng) in own for _ in range(50))  # even classes keep their own name
        partner = [t.replace("{}", names[0]) for t in tasks.TASKS[task].templates]
        assert all(tasks.caption(task, 1, rng, confusion=1.0) in partner for _ in range(50))
        assert not any(names[0] in tasks.caption(task, 1, rng, confusion=0.0).split() for _ in range(50))
    # the rate reaches pretraining; the images do not depend on it
    images, exact = tasks.pretraining_pairs("digits", 20, 0.5, confusion=0.0)
    again, confused = tasks.pretraining_pairs("digits", 20, 0.5, confusion=1.0)
    np.testing.assert_array_equal(images, again)
    names = tasks.TASKS["digits"].classnames
    assert all(names[i % 10] in text.split() for i, text in enumerate(exact))
    assert all(names[i % 10 - i % 2] in text.split() for i, text in enumerate(confused))


def test_unknown_task_split_or_count():
    with pytest.raises(KeyError, match="digits, letters"):
        tasks.sample("mnist", "train", 0)
    with pytest.raises(ValueError, match="train, val, test"):
        tasks.generate("digits", "validation", 3)
    with pytest.raises(ValueError, match="n must be"):
        tasks.generate("digits", "train", -1)


def test_export_imagefolder_round_trip_and_atomic_replace(tmp_path, monkeypatch):
    folder = tmp_path / "shapes" / "val"
    x, y = tasks.generate("shapes", "val", 20, seed=1)
    assert tasks.export_imagefolder("shapes", "val", 20, folder, seed=1) == folder
    names = tasks.TASKS["shapes"].classnames
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    files = sorted(folder.glob("*/*.png"))
    assert [f"{names[label]}/{i:05d}.png" for i, label in enumerate(y)] == \
           [p.relative_to(folder).as_posix() for p in sorted(files, key=lambda p: p.name)]
    for path in files:
        with Image.open(path) as image:
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), x[int(path.stem)])
    first = {p.name: p.read_bytes() for p in files}

    (folder / "stale").mkdir()
    (folder / "circle" / "99999.png").write_bytes(b"old")
    tasks.export_imagefolder("shapes", "val", 20, folder, seed=1)   # replaces the folder wholesale
    assert {p.name: p.read_bytes() for p in folder.glob("*/*.png")} == first   # byte-identical PNGs
    assert not (folder / "stale").exists() and sorted(p.name for p in folder.parent.iterdir()) == ["val"]

    calls = []

    def failing_save(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        return original(self, path, *args, **kwargs)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tasks.export_imagefolder("shapes", "val", 20, folder, seed=2)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.glob("*/*.png")} == first   # the old export is untouched
    assert sorted(p.name for p in folder.parent.iterdir()) == ["val"]          # and no temporary left behind


def _pixel_features(x: np.ndarray) -> np.ndarray:
    """Simple raw-pixel features: an 8×8 colour thumbnail, the salience map |pixel − median colour| (where things
    are) and its amplitude spectrum (what they look like, wherever they are)."""
    x = x.astype(np.float32) / 255
    n = len(x)
    thumbnail = x.reshape(n, 8, 4, 8, 4, 3).mean((2, 4)).reshape(n, -1)
    salience = np.linalg.norm(x - np.median(x.reshape(n, -1, 3), 1)[:, None, None], axis=-1)
    spectrum = np.abs(np.fft.rfft2(salience - salience.mean((1, 2), keepdims=True)))[:, :16, :16]
    return np.concatenate([thumbnail, salience.reshape(n, -1), spectrum.reshape(n, -1)], 1)


def test_raw_pixel_baseline_is_above_chance_but_far_from_perfect(data):
    from sklearn.linear_model import RidgeClassifier

    scores = {}
    for task, (x, y, xt, yt) in data.items():
        train, test = _pixel_features(x), _pixel_features(xt)
        mean, std = train.mean(0), train.std(0) + 1e-6
        scores[task] = RidgeClassifier(alpha=1000).fit((train - mean) / std, y).score((test - mean) / std, yt)
    for task, score in scores.items():
        chance = 1 / EXPECTED[task]
        sigmas = 1 if task == "counts" else 3   # a count is far from linear in pixels of the low-contrast domain
        assert score > chance + sigmas * np.sqrt(chance * (1 - chance) / 200), scores   # labels carry signal
    assert max(scores[t] for t in ("digits", "letters", "shapes")) < 0.9, scores   # not linearly trivial
