"""Dataset providers (tasks/common/providers.py): a source of ``<provider>/<split>`` test sets registers itself; the
tasks' data code reaches it through the registry and never imports it (the embedded world is one)."""
from __future__ import annotations

import pytest
from PIL import Image

import import_graph
from tasks.classification.datasets import DatasetIdError, InMemoryDataset, build_dataset, canonical_id, list_datasets
from tasks.classification.run import split_set_ids
from tasks.common import providers
from tasks.retrieval.data import build_retrieval_data


def test_the_world_is_a_provider_the_data_code_does_not_import():
    g = import_graph.edges()
    data_code = [m for m in g if m.startswith(("tasks.classification", "tasks.retrieval"))]
    assert not [(m, d) for m in data_code for d in g[m] if d.startswith("tasks.world")]
    assert "world" in providers.list_providers() and "world" in list_datasets()
    world = providers.get_provider("world")
    assert world.classification is not None and world.retrieval is not None
    assert canonical_id("World/val") == ("world", ["val"])
    with pytest.raises(DatasetIdError, match="takes one split"):
        canonical_id("world")
    with pytest.raises(KeyError, match="no dataset provider 'nowhere'"):
        providers.get_provider("nowhere")


def test_a_registered_provider_serves_classification_and_retrieval(tmp_path):
    seen = {}

    def classification(split, root, transform=None):
        seen["classification"] = (split, root)
        return InMemoryDataset([Image.new("RGB", (8, 8))] * 2, [0, 1], ["cat", "dog"])

    def retrieval(split, root):
        seen["retrieval"] = (split, root)
        return ["a", "b"], [["a red cat"], ["a blue dog", "a dog"]], lambda i: Image.new("RGB", (8, 8))

    providers.register_provider(providers.Provider("fakeprov", classification, retrieval))
    try:
        ds = build_dataset("fakeprov/test", tmp_path)
        assert ds.classnames == ["cat", "dog"] and seen["classification"] == ("test", tmp_path)
        assert split_set_ids("fakeprov/a/b") == ["fakeprov/a", "fakeprov/b"] and split_set_ids("fakeprov/a") == [
            "fakeprov/a"]
        data = build_retrieval_data({"dataset": "fakeprov/dev", "root": str(tmp_path), "max_words": 50})
        assert data.name == "fakeprov_dev" and seen["retrieval"] == ("dev", tmp_path) and len(data.texts) == 3
        with pytest.raises(KeyError, match="already registered"):
            providers.register_provider(providers.Provider("fakeprov"))
    finally:
        providers._PROVIDERS.pop("fakeprov", None)
