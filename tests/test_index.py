"""One battery over every index type, checked against exact brute-force neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from recommender.index import VectorIndex, choose_factory


def clustered(n=3000, d=32, clusters=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


@pytest.mark.parametrize("factory, floor", [("Flat", 1.0), ("IVF32,Flat", 0.95), ("IVF32,SQ8", 0.9)])
def test_search_matches_brute_force(tmp_path, factory, floor):
    x = clustered()
    ids = np.arange(1000, 1000 + len(x), dtype=np.int64)  # ids are not row numbers
    queries = x[:50]
    exact = ids[np.argsort(-(queries @ x.T), axis=1)[:, :10]]
    index = VectorIndex.build(x, ids, factory)
    scores, found = index.search(queries, 10)
    assert recall_at_k(found, exact) >= floor
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    index.save(tmp_path / "i.faiss")
    loaded = VectorIndex.load(tmp_path / "i.faiss", factory)
    assert len(loaded) == len(x)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], found)


def test_flat_scores_are_cosines():
    x = clustered(200)
    index = VectorIndex.build(x, np.arange(200), "Flat")
    scores, found = index.search(x[:3], 1)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert list(found[:, 0]) == [0, 1, 2]
    np.testing.assert_allclose(index.index.reconstruct(5), x[5], atol=1e-6)  # ids map to their vectors


def test_k_larger_than_index_and_type_name():
    index = VectorIndex.build(clustered(5), np.arange(5), "")
    assert index.search(clustered(5)[:1], 50)[1].shape == (1, 5)
    assert index.type_name == "IndexFlat"


def test_choose_factory_by_size():
    assert choose_factory(10_000) == "Flat"
    assert choose_factory(100_000) == "IVF1264,Flat"
    assert choose_factory(1_000_000) == "IVF4000,SQ8"  # 1.5 GB of float32 otherwise
    # The passage index: its candidates are re-scored exactly, 48-byte codes do.
    assert choose_factory(2_700_000, candidates_only=True) == "IVF6572,PQ48"
    assert choose_factory(100_000, candidates_only=True) == "IVF1264,Flat"
    assert choose_factory(1_000_000, 100, candidates_only=True) == "IVF4000,SQ8"  # 100 is not a multiple of 8


def test_row_number_ids_need_no_id_map(tmp_path):
    import faiss

    x = clustered(12_000, d=32)
    index = VectorIndex.build(x, None, "IVF32,PQ8")
    assert not isinstance(index.index, faiss.IndexIDMap2)
    queries = x[:100]
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    _, pool = index.search(queries, 300)
    # As search uses it: the codes pick candidates, exact vectors rank them.
    reranked = np.array([p[np.argsort(-(x[p] @ q))[:10]] for p, q in zip(pool, queries)])
    assert recall_at_k(reranked, exact) >= 0.95
    index.save(tmp_path / "c.faiss")
    loaded = VectorIndex.load(tmp_path / "c.faiss", "IVF32,PQ8", mmap=False)
    rebuilt = VectorIndex.build(x[:6000], None, "IVF32,PQ8", trained=loaded)
    assert rebuilt.reused_training and len(rebuilt) == 6000
    _, found = rebuilt.search(x[:100], 300)
    assert found.max() < 6000 and np.mean([i in f for i, f in enumerate(found)]) >= 0.95  # ids are rows
    # An index with an id map is not reused for row-number ids, nor the other way round.
    with_ids = VectorIndex.build(x, np.arange(len(x)), "IVF32,PQ8")
    assert not VectorIndex.build(x, None, "IVF32,PQ8", trained=with_ids).reused_training


def test_training_is_reused_only_while_it_fits():
    from recommender.index import can_reuse_training

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    previous = VectorIndex.build(vectors, np.arange(3000), "IVF64,Flat")
    assert can_reuse_training(previous, "IVF64,Flat", 16, auto=False)
    assert can_reuse_training(previous, "IVF100,Flat", 16, auto=True)  # the archive grew a little
    assert not can_reuse_training(previous, "IVF200,Flat", 16, auto=True)  # it outgrew the lists
    assert not can_reuse_training(previous, "IVF100,Flat", 16, auto=False)  # a factory set by hand is obeyed
    assert not can_reuse_training(previous, "IVF64,SQ8", 16, auto=True)
    assert not can_reuse_training(previous, "IVF64,Flat", 32, auto=False)

    rebuilt = VectorIndex.build(vectors[:2000], np.arange(2000), "IVF64,Flat", trained=previous)
    assert rebuilt.reused_training and len(rebuilt) == 2000
    _, found = rebuilt.search(vectors[:200], 1)  # 32 of 64 lists probed
    assert (found[:, 0] == np.arange(200)).mean() >= 0.9
