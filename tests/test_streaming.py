"""Streaming domains: parquet shards of the tiny benchmark read as single-domain batches, the shared domain
schedule, shard splitting across processes, exact resume (also after kill -9, on 1 and 2 gloo processes), bad
rows and empty domains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hf_distill.data import ImageDecodeError, load_domains
from hf_distill.data.streaming import StreamingDomainBatches, write_parquet_shards
from hf_distill.sampling import DomainBatchSampler

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "streaming_train.py"
DOMAINS = ["digits", "lowres_digits"]  # 162 and 30 training rows
NUM_SHARDS = 4


@pytest.fixture(scope="module")
def shards(tiny_benchmark, tmp_path_factory) -> Path:
    """The tiny benchmark's training splits of two domains as 4 parquet shards each."""
    domains = {name: tiny_benchmark.domains[name] for name in DOMAINS}
    return write_parquet_shards(
        domains, tmp_path_factory.mktemp("shards"), NUM_SHARDS, num_classes=tiny_benchmark.num_classes
    )


def pixels(image):
    """A tiny deterministic transform (the reader's RNG seeding is tested through the trainer runs)."""
    return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)


def reader(shards, **overrides):
    settings = dict(batch_size=4, strategy="round_robin", seed=0, update_every=4, shuffle_buffer=8)
    settings.update(overrides)
    streams = load_domains(shards, DOMAINS, streaming=True)
    return StreamingDomainBatches(streams, pixels, id_column="example_id", **settings)


def draw(batches, count, losses=None):
    """The first ``count`` batches as (domain id, example ids), reporting a loss per domain when given."""
    out = []
    for batch in batches:
        domain = int(batch["domain_ids"][0])
        out.append((domain, list(batch["example_ids"])))
        if losses is not None:
            batches.record_loss(domain, losses[domain])
        if len(out) == count:
            break
    return out


def test_streams_count_rows_from_shard_metadata(tiny_benchmark, shards):
    streams = load_domains(shards, DOMAINS, streaming=True)
    assert streams.num_rows == {name: len(tiny_benchmark.domains[name]["train"]) for name in DOMAINS}
    assert streams.num_classes == {name: tiny_benchmark.num_classes[name] for name in DOMAINS}
    assert all(streams.datasets[name].n_shards == NUM_SHARDS for name in DOMAINS)
    # the labels streamed are the map-style split's, row for row
    streamed = [row["label"] for row in streams.datasets["lowres_digits"]]
    assert streamed == tiny_benchmark.domains["lowres_digits"]["train"]["label"]


@pytest.mark.parametrize("strategy", ["round_robin", "size", "balanced", "dynamic"])
def test_domain_sequence_is_the_map_style_samplers(shards, strategy):
    losses = {0: 1.0, 1: 3.0}
    streamed = [domain for domain, _ in draw(reader(shards, strategy=strategy), 16, losses)]
    # The map-style sampler on index lists of the same sizes: the same schedule, whatever the data.
    sampler = DomainBatchSampler(
        {"digits": range(162), "lowres_digits": range(30)}, 4, strategy, update_every=4
    )
    expected = []
    for _ in sampler:
        expected.append(sampler.domain_at(len(expected)))
        sampler.record_loss(expected[-1], losses[expected[-1]])
        if len(expected) == 16:
            break
    assert streamed == expected
    if strategy == "round_robin":
        assert streamed == [0, 1] * 8


def test_one_pass_draws_every_row_once_in_shuffled_order(shards):
    batches = draw(reader(shards, batch_size=2), 30)
    lowres = [i for domain, ids in batches if domain == 1 for i in ids]
    assert sorted(lowres) == sorted(f"lowres_digits/{row}" for row in range(30))
    assert lowres != sorted(lowres, key=lambda name: int(name.split("/")[1]))


def test_processes_read_their_own_shards_and_draw_the_same_domains(shards):
    ranks = [draw(reader(shards, batch_size=2, num_replicas=2, rank=rank), 12) for rank in range(2)]
    assert [d for d, _ in ranks[0]] == [d for d, _ in ranks[1]]
    # shard s of a domain holds its rows s * n/4 ... (contiguous); process r reads shards r and r + 2
    bounds = [0, 8, 16, 23, 30]  # 30 rows in 4 contiguous shards: 8, 8, 7, 7
    for rank, batches in enumerate(ranks):
        rows = [int(i.split("/")[1]) for d, ids in batches if d == 1 for i in ids]
        shard_of = [int(np.searchsorted(bounds, row, side="right") - 1) for row in rows]
        assert set(shard_of) <= {rank, rank + 2}, (rank, rows)
    seen = [set(i for _, ids in batches for i in ids) for batches in ranks]
    assert not seen[0] & seen[1]


def test_state_dict_restores_the_exact_stream_despite_read_ahead(shards):
    losses = {0: 1.0, 1: 2.0}
    full = draw(reader(shards, strategy="dynamic"), 24, losses)
    first = reader(shards, strategy="dynamic")
    iterator = iter(first)
    for _ in range(10):  # 10 trained batches ...
        batch = next(iterator)
        first.record_loss(int(batch["domain_ids"][0]), losses[int(batch["domain_ids"][0])])
    next(iterator), next(iterator)  # ... and two read ahead, never trained
    state = first.state_dict()
    resumed = reader(shards, strategy="dynamic")
    resumed.load_state_dict(state)
    resumed.skip_placeholders = False
    assert draw(resumed, 14, losses) == full[10:]


def test_state_of_another_configuration_is_refused(shards):
    state = reader(shards).state_dict()
    with pytest.raises(ValueError, match="num_replicas"):
        reader(shards, num_replicas=2, rank=0, batch_size=2).load_state_dict(state)


def corrupt_row(shards: Path, domain: str, shard: int, row: int) -> Path:
    path = sorted((shards / domain / "train").glob("*.parquet"))[shard]
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[row] = {"bytes": b"\x89PNG broken", "path": None}
    table = table.set_column(
        table.schema.get_field_index("image"), "image", pa.array(images, table.schema.field("image").type)
    )
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    return path


@pytest.fixture
def bad_shards(tiny_benchmark, tmp_path) -> tuple[Path, Path]:
    root = write_parquet_shards(
        {name: tiny_benchmark.domains[name] for name in DOMAINS},
        tmp_path,
        NUM_SHARDS,
        num_classes=tiny_benchmark.num_classes,
    )
    return root, corrupt_row(root, "lowres_digits", 1, 3)


def test_a_bad_row_raises_naming_domain_shard_and_row(bad_shards):
    root, path = bad_shards
    with pytest.raises(ImageDecodeError, match=rf"domain 'lowres_digits', shard {path}, row 3"):
        draw(reader(root, batch_size=2), 30)


def test_a_bad_row_is_skipped_and_counted(bad_shards):
    root, path = bad_shards
    batches = reader(root, batch_size=2, on_bad_image="skip")
    drawn = draw(batches, 30)
    lowres = [i for domain, ids in drawn if domain == 1 for i in ids]
    # shard 1 holds rows 8..15 (30 rows in 4 contiguous shards of 8, 8, 7, 7): its row 3 is row 11
    assert "lowres_digits/11" not in lowres and all(len(ids) == 2 for _, ids in drawn)
    assert batches.decode_report.num_skipped == 1
    assert batches.decode_report.skipped[0][0] == f"domain 'lowres_digits', shard {path}, row 3"


def test_an_empty_domain_stream_is_an_error_naming_the_domain(tiny_benchmark, tmp_path):
    root = write_parquet_shards({"digits": tiny_benchmark.domains["digits"]}, tmp_path, 2)
    empty = tiny_benchmark.domains["lowres_digits"]["train"].select([])
    (tmp_path / "lowres_digits" / "train").mkdir(parents=True)
    empty.to_parquet(str(tmp_path / "lowres_digits" / "train" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="domain 'lowres_digits'.*stream is empty"):
        load_domains(root, DOMAINS, streaming=True)


def run_script(shards: Path, output_dir: Path, tag: str, processes: int = 1, **options) -> int:
    arguments = ["--shards", str(shards), "--output_dir", str(output_dir), "--tag", tag, "--save_steps", "5"]
    for key, value in options.items():
        arguments += [f"--{key}", str(value)]
    if processes == 1:
        command = [sys.executable, str(SCRIPT), *arguments]
    else:
        command = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--main_process_port",
            "0",  # a free port: pytest-xdist may run two launches at once
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(SCRIPT),
            *arguments,
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if "kill_at" not in options:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.returncode


def read_ids(output_dir: Path, tag: str, rank: int = 0) -> dict[int, list[str]]:
    lines = (output_dir / f"ids_{tag}_rank{rank}.jsonl").read_text().splitlines()
    return {step: ids for step, ids in map(json.loads, lines)}


@pytest.mark.slow
def test_udon_run_from_streamed_shards_resumes_exactly_after_kill_9(shards, tmp_path):
    run_script(shards, tmp_path / "full", "full")
    full = read_ids(tmp_path / "full", "full")
    assert sorted(full) == list(range(1, 13))
    assert {ids[0].split("/")[0] for ids in full.values()} == set(DOMAINS)
    assert run_script(shards, tmp_path / "cut", "cut", kill_at=9) == -9
    assert (tmp_path / "cut" / "checkpoint-5").is_dir() and not (tmp_path / "cut" / "checkpoint-10").exists()
    run_script(shards, tmp_path / "cut", "resumed")
    resumed = read_ids(tmp_path / "cut", "resumed")
    # from the checkpoint on (steps 6-12: a dynamic window boundary and a pass over lowres_digits), the same ids
    assert resumed == {step: full[step] for step in range(6, 13)}


@pytest.mark.slow
def test_two_gloo_processes_resume_exactly_after_kill_9(shards, tmp_path):
    returncode = run_script(shards, tmp_path / "cut", "cut", processes=2, kill_at=9, batch_size=2)
    assert returncode != 0 and (tmp_path / "cut" / "checkpoint-5").is_dir()
    run_script(shards, tmp_path / "cut", "resumed", processes=2, batch_size=2)
    cut = [read_ids(tmp_path / "cut", "cut", rank) for rank in range(2)]
    resumed = [read_ids(tmp_path / "cut", "resumed", rank) for rank in range(2)]
    for rank in range(2):
        assert sorted(resumed[rank]) == list(range(6, 13))
        # the interrupted run trained steps 6-9 uninterrupted: the relaunch sees the same ids there
        assert {step: resumed[rank][step] for step in range(6, 10)} == {
            step: cut[rank][step] for step in range(6, 10)
        }
    # both processes draw the same domain at every step, from disjoint rows
    for step in range(1, 13):
        ids = [(cut[rank] if step < 6 else resumed[rank])[step] for rank in range(2)]
        assert ids[0][0].split("/")[0] == ids[1][0].split("/")[0]
        assert not set(ids[0]) & set(ids[1])


def write_image_folders_and_tars(tiny_benchmark, root: Path) -> tuple[Path, Path]:
    """lowres_digits' training images as ``<domain>/train/<class>/<n>.png`` and as 2 webdataset shards."""
    import io
    import tarfile

    split = tiny_benchmark.domains["lowres_digits"]["train"]
    folders, tars = root / "folders", root / "tars"
    (tars / "lowres_digits" / "train").mkdir(parents=True)
    archives = [tarfile.open(tars / "lowres_digits" / "train" / f"{i:05d}.tar", "w") for i in range(2)]
    for row, example in enumerate(split):
        folder = folders / "lowres_digits" / "train" / f"{example['label']:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        example["image"].save(folder / f"{row:04d}.png")
        buffer = io.BytesIO()
        example["image"].save(buffer, format="PNG")
        for suffix, data in (("png", buffer.getvalue()), ("cls", str(example["label"]).encode())):
            info = tarfile.TarInfo(f"{row:04d}.{suffix}")
            info.size = len(data)
            archives[row % 2].addfile(info, io.BytesIO(data))
    for archive in archives:
        archive.close()
    (tars / "streaming.json").write_text(json.dumps({"domains": {"lowres_digits": {"num_classes": 6}}}))
    return folders, tars


def test_image_folders_and_webdataset_shards_stream_the_same_images(tiny_benchmark, tmp_path):
    folders, tars = write_image_folders_and_tars(tiny_benchmark, tmp_path)
    split = tiny_benchmark.domains["lowres_digits"]["train"]
    expected = sorted(zip(split["label"], (np.asarray(image).tobytes() for image in split["image"])))
    for source in (folders, tars):
        streams = load_domains(source, ["lowres_digits"], streaming=True)
        assert streams.num_rows == {"lowres_digits": 30} and streams.num_classes == {"lowres_digits": 6}
        batches = StreamingDomainBatches(streams, lambda image: torch.from_numpy(np.asarray(image).copy()), 5)
        drawn = [batch for _, batch in zip(range(6), batches)]  # one pass: 6 batches of 5
        got = sorted(
            (int(label), pixels.numpy().tobytes())
            for batch in drawn
            for label, pixels in zip(batch["labels"], batch["pixel_values"])
        )
        assert got == expected, source
