"""Constrained k-means (the ``examples`` fit): centres from the labelled means, labelled rows keep their class,
names saved with the k-means; and MNIST/IDX-style evaluation named by a few labelled train instances."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.cluster import KMeans

from pathoucc.cluster.constrained import constrained_kmeans, named_cluster_model, nearest_centre
from pathoucc.cluster.evaluate import evaluate_raw_pixels
from pathoucc.cluster.kmeans import ClusterModel, KMeansFit
from pathoucc.config import config_from_dict
from pathoucc.errors import PathouccError

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (CENTRES[y] + rng.normal(0, 1.0, (n, 2))).astype(np.float32), y


def test_labelled_rows_keep_their_class_and_centres_follow_the_class_order() -> None:
    x, y = blobs(600)
    # examples of class order 2, 0 (two of the three classes): centre 0 is class 2's, centre 1 class 0's
    lab = np.concatenate([x[y == 2][:3], x[y == 0][:3]])
    fit = constrained_kmeans(x, lab, np.array([0, 0, 0, 1, 1, 1]), k=3, seed=0)
    assert np.linalg.norm(fit.centers[0] - CENTRES[2]) < 0.5 and np.linalg.norm(fit.centers[1] - CENTRES[0]) < 0.5
    assert np.linalg.norm(fit.centers[2] - CENTRES[1]) < 0.5  # the unnamed one found the third blob
    expected = np.array([1, 2, 0])[y]  # blob -> centre
    assert np.mean(fit.assignment == expected) > 0.99
    # a labelled example far from its class's blob still pulls only its own centre (it keeps its class)
    odd = constrained_kmeans(x, np.array([[10.0, 0.0], [0.0, 0.0]], np.float32), np.array([0, 1]), k=3)
    assert np.linalg.norm(odd.centers[0] - CENTRES[1]) < 0.5 and np.linalg.norm(odd.centers[1] - CENTRES[0]) < 0.5


def test_without_examples_it_is_lloyds_fixed_point_of_sklearn() -> None:
    x, _ = blobs(400, seed=1)
    fit = constrained_kmeans(x, np.zeros((0, 2), np.float32), np.zeros(0, np.int64), k=3, seed=4)
    ref = KMeans(n_clusters=3, init=fit.centers, n_init=1).fit(x)  # starting at the fixed point: stays there
    np.testing.assert_allclose(ref.cluster_centers_, fit.centers, atol=1e-4)
    np.testing.assert_array_equal(ref.labels_, fit.assignment)
    assert fit.inertia == pytest.approx(ref.inertia_ / len(x), rel=1e-4)


def test_deterministic_for_a_seed_on_many_rows() -> None:
    """Many rows (assigned in chunks), the same seed twice: the same centres (speed: tools/ benchmarks)."""
    x, y = blobs(70_000, seed=2)  # more than one CHUNK of rows
    lab_rows = np.concatenate([np.flatnonzero(y == c)[:5] for c in range(3)])
    a = constrained_kmeans(x, x[lab_rows], y[lab_rows], k=4, seed=3)
    b = constrained_kmeans(x, x[lab_rows], y[lab_rows], k=4, seed=3)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert np.mean(a.assignment[y == 0] == 0) > 0.9  # class 0's blob stays with centre 0 (the 4th splits one)


def test_names_more_classes_than_k_and_missing_classes() -> None:
    x, y = blobs(300)
    lab = x[[np.flatnonzero(y == 0)[0], np.flatnonzero(y == 1)[0]]]
    cm, notes = named_cluster_model(x, lab, np.array([2, 0]), ["tumour", "stroma", "necrosis"], 3, 0, "test")
    assert cm.names == ["tumour", "necrosis", "cluster 2"] and cm.fit is KMeansFit.EXAMPLES
    assert notes == ["classes without a labelled example (their patches fall in unnamed clusters): stroma"]
    with pytest.raises(PathouccError, match="3 named classes have examples but k=2"):
        constrained_kmeans(x, x[:3], np.array([0, 1, 2]), k=2)


def test_names_are_saved_with_the_kmeans(tmp_path) -> None:
    x, y = blobs(300)
    rows = [int(np.flatnonzero(y == c)[0]) for c in range(3)]
    cm, _ = named_cluster_model(x, x[rows], np.arange(3), ["a", "b", "c"], 3, 0, "s")
    cm.save(tmp_path / "kmeans-k3.npz")
    back = ClusterModel.load(tmp_path / "kmeans-k3.npz")
    assert back.names == cm.names and back.fit is KMeansFit.EXAMPLES and back.describe()["names"] == cm.names
    plain = ClusterModel(cm.centers, fit=KMeansFit.TRAIN)
    plain.save(tmp_path / "plain.npz")
    loaded = ClusterModel.load(tmp_path / "plain.npz")
    assert loaded.names is None and loaded.cluster_names == ["cluster 0", "cluster 1", "cluster 2"]


def test_nearest_centre_in_chunks_equals_the_full_matrix() -> None:
    x, _ = blobs(1000)
    index, dist = nearest_centre(x, CENTRES, chunk=7)
    full = ((x[:, None] - CENTRES[None]) ** 2).sum(2)
    np.testing.assert_array_equal(index, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-4, atol=1e-3)


def test_raw_pixel_baseline_named_by_a_labelled_fraction(tiny_config) -> None:
    cfg = config_from_dict(tiny_config | {"data": tiny_config["data"] | {"labels_per_class": 5}})
    named = evaluate_raw_pixels(cfg, "test")
    plain = evaluate_raw_pixels(config_from_dict(tiny_config), "test")
    assert named["kmeans"]["fit"] == "examples" and named["num_examples"] == 5 * 10
    assert sorted(named["kmeans"]["names"]) == [str(d) for d in range(10)]
    # named accuracy reads cluster names (no matching); it can never beat the best one-to-one matching
    assert 0.5 < named["named_accuracy"] <= named["accuracy"] + 1e-9
    assert "named_accuracy" not in plain and plain["kmeans"]["fit"] == "heldout"


def test_labelled_share_options_are_checked(tiny_config) -> None:
    with pytest.raises(PathouccError, match="not both"):
        config_from_dict(tiny_config | {"data": tiny_config["data"] | {"labels_per_class": 5,
                                                                      "labelled_fraction": 0.1}})
    with pytest.raises(PathouccError, match="--examples"):
        config_from_dict({"data": {"source": "tiles", "labelled_fraction": 0.1}})


def test_evaluate_names_clusters_from_labelled_train_instances(monkeypatch, capsys, tiny_config, tmp_path) -> None:
    from helpers import run_cli

    from pathoucc.training.train import train_ucc

    run = train_ucc(config_from_dict(tiny_config | {"eval": {"k": 10, "n_init": 2}}), tmp_path / "run")
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--labels-per-class", "3", "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    named = metrics["test+examples"]
    assert named["num_examples"] == 30 and named["kmeans"]["fit"] == "examples" and "named accuracy" in out
    assert 0 < named["named_accuracy"] <= named["accuracy"] + 1e-9
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", str(run), "--labels-per-class", "0")
    assert code == 2 and "labels_per_class" in err and len(err.strip().splitlines()) == 1
