"""``hf-distill evaluate`` on embedding files (safetensors / npz, labels in the file or from the benchmark)
and on a saved model directory."""

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from test_evaluation_metrics import DOMAIN_A, DOMAIN_B, EXPECTED

from hf_distill.commands import evaluate as evaluate_command
from hf_distill.evaluation import RetrievalDomain, RetrievalEvaluator, evaluate_retrieval
from hf_distill.evaluation.embeddings_file import read_embeddings_file, save_embeddings_file


def run_evaluate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hf-distill")
    evaluate_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_embeddings_file_with_labels(tmp_path, capsys, suffix):
    path = save_embeddings_file(tmp_path / f"descriptors{suffix}", {"a": DOMAIN_A, "b": DOMAIN_B})
    parts = read_embeddings_file(path)
    # Domain a is query = index: no 'a/index' key; b's multi-label query is a padded row.
    assert sorted(parts["a"]) == ["query", "query_labels"]
    np.testing.assert_array_equal(parts["b"]["query_labels"], [[5, -1], [5, 6], [9, -1]])

    output = tmp_path / "metrics.json"
    assert run_evaluate(["--embeddings", str(path), "--output", str(output)]) == 0
    saved = json.loads(output.read_text())
    assert saved["metrics"] == pytest.approx(EXPECTED, abs=1e-12)
    assert saved["sizes"] == {"a": {"queries": 5, "index": 5}, "b": {"queries": 3, "index": 3}}
    table = capsys.readouterr().out.splitlines()
    assert table[0].split("|")[1].strip() == "merged R@1"
    mean_row = next(line for line in table if line.startswith("mean"))
    assert mean_row.split("|")[2].strip() == f"{EXPECTED['merged/mean/mP@5']:.4f}"


def test_embeddings_file_labels_from_benchmark(tmp_path, tiny_benchmark, tiny_benchmark_dir):
    # Random descriptors for the val pairs (val/val: query set = index set) of two domains, no labels in
    # the file: the labels come from the benchmark, row by row.
    names = tiny_benchmark.domain_names[:2]
    generator = torch.Generator().manual_seed(0)
    arrays, reference = {}, {}
    for name in names:
        query_split, index_split = tiny_benchmark.eval_pairs["val"][name]
        assert query_split == index_split
        dataset = tiny_benchmark.domains[name][query_split]
        arrays[f"{name}/query"] = torch.randn(len(dataset), 8, generator=generator).numpy()
        reference[name] = RetrievalDomain(arrays[f"{name}/query"], list(dataset["label"]))
    path = tmp_path / "val.safetensors"
    save_file(arrays, str(path))
    output = tmp_path / "metrics.json"
    argv = ["--embeddings", str(path), "--benchmark", str(tiny_benchmark_dir), "--split", "val"]
    assert run_evaluate([*argv, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["metrics"] == pytest.approx(evaluate_retrieval(reference))

    # A val/val domain given separate index embeddings would silently lose self-match removal: refused.
    arrays[f"{names[0]}/index"] = arrays[f"{names[0]}/query"]
    save_file(arrays, str(path))
    with pytest.raises(ValueError, match=f"domain '{names[0]}'.*must not have '{names[0]}/index'"):
        run_evaluate(argv)


def test_embeddings_file_errors(tmp_path):
    bad_key = tmp_path / "bad.npz"
    np.savez(bad_key, **{"cars/queries": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="key 'cars/queries' is not '<domain>/<part>'"):
        read_embeddings_file(bad_key)
    no_query = tmp_path / "no_query.npz"
    np.savez(no_query, **{"cars/index": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="domain 'cars' has no 'cars/query'"):
        read_embeddings_file(no_query)
    wrong_count = tmp_path / "count.npz"
    np.savez(
        wrong_count, **{"cars/query": np.ones((3, 2), np.float32), "cars/query_labels": np.array([0, 1])}
    )
    with pytest.raises(ValueError, match="domain 'cars' has 3 query embeddings but 2 query labels"):
        run_evaluate(["--embeddings", str(wrong_count)])
    torch_file = tmp_path / "x.pt"
    torch_file.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported embeddings file type '.pt'"):
        read_embeddings_file(torch_file)
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        read_embeddings_file(tmp_path / "missing.npz")


def test_model_directory(tmp_path, tiny_benchmark, tiny_benchmark_dir):
    from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel
    from hf_distill.models.embedder.image_processing_embedder import UniversalEmbedderImageProcessor

    torch.manual_seed(0)
    model = UniversalEmbedderModel(UniversalEmbedderConfig(backbone="resnet10t", embed_dim=16, image_size=32))
    model.save_pretrained(tmp_path / "model")
    UniversalEmbedderImageProcessor.from_model_config(model.config).save_pretrained(tmp_path / "model")
    domain = tiny_benchmark.domain_names[0]
    output = tmp_path / "metrics.json"
    argv = ["--model", str(tmp_path / "model"), "--benchmark", str(tiny_benchmark_dir), "--split", "val"]
    saved = tmp_path / "embeddings.npz"
    assert (
        run_evaluate([*argv, "--domains", domain, "--output", str(output), "--save-embeddings", str(saved)])
        == 0
    )
    # The CLI (reloaded model, saved image processor) matches the in-process evaluator (config transform).
    expected = RetrievalEvaluator(tiny_benchmark, split="val", domains=[domain])(model)
    assert json.loads(output.read_text())["metrics"] == pytest.approx(expected, abs=1e-6)
    # The saved descriptors score the same without the model (val/val: no index key, labels included).
    assert sorted(read_embeddings_file(saved)[domain]) == ["query", "query_labels"]
    assert run_evaluate(["--embeddings", str(saved), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["metrics"] == pytest.approx(expected, abs=1e-6)
