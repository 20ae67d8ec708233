"""MLFD stage-4 students over a cached trunk: the trunk's maps are those of the very views the teachers' cache
holds, the trunk path computes what the pixel path does, a cut that would freeze a distilled level is refused,
and training moves the top only, exporting a student that takes pixels."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from hf_distill.data import ImageTransform, load_domains
from hf_distill.data.domains import Benchmark
from hf_distill.layers.pixels import PixelNormalize
from hf_distill.layers.trunk import trunk_forward
from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierModel
from hf_distill.teachers.cache import map_column, transform_view, view_seed
from hf_distill.teachers.offline import resolve_offline_weights
from hf_distill.trainers.mlfd_stages import (
    MlfdStageArguments,
    classifier_config,
    joint_teacher_config,
    stage2_cache,
    stage4_students,
    student_config,
    student_training_set,
)
from recipes.mlfd import MlfdRecipe

DOMAINS = ["digits", "flags"]
SEED = 3


@pytest.fixture(scope="module")
def tiny_benchmark() -> Benchmark:
    """Two real domains of the offline benchmark, 16 images per split."""
    full = load_domains("data/manydomain", DOMAINS)
    domains = {
        name: datasets.DatasetDict({split: ds.select(range(16)) for split, ds in full.domains[name].items()})
        for name in DOMAINS
    }
    pairs = {split: {name: full.eval_pairs[split][name] for name in DOMAINS} for split in full.eval_pairs}
    return Benchmark(domains, {name: full.num_classes[name] for name in DOMAINS}, pairs, full.metadata)


def _arguments(root, **overrides) -> MlfdStageArguments:
    weights = resolve_offline_weights("efficientnet_lite0")
    values = dict(
        output_dir=str(root),
        domains=DOMAINS,
        teacher_backbones=[weights.architecture],
        image_mean=list(weights.mean),
        image_std=list(weights.std),
        seed=SEED,
        cache_views=2,
        cache_dtype="float32",
        batch_size=8,
        eval_batch_size=16,
        joint_adaptor_channels=8,
        joint_out_channels=8,
        student_pretrained="efficientnet_lite0",
        student_levels=[-1],
        trainable_from=3,
        student_epochs=1,
        evaluate_starting_point=False,
        logging_steps=1,
    )
    values.update(overrides)
    return MlfdStageArguments(**values)


@pytest.fixture(scope="module")
def stages(tmp_path_factory, tiny_benchmark):
    """Stages 1-3 done with random teachers and an untrained joint teacher (what stage 4 reads, not how good)."""
    root = tmp_path_factory.mktemp("mlfd_trunk")
    args = _arguments(root)
    teachers = {}
    for index, domain in enumerate(DOMAINS):
        torch.manual_seed(index)
        config = classifier_config(args, index, tiny_benchmark.num_classes[domain])
        teachers[domain] = MlfdClassifierModel(config).eval()
        teachers[domain].save_pretrained(root / "teachers" / domain)
    caches = stage2_cache(args, tiny_benchmark, teachers)
    torch.manual_seed(0)
    joint = JointTeacherModel(joint_teacher_config(args, tiny_benchmark, teachers, caches)).eval()
    return args, teachers, caches, joint


def test_trunk_maps_are_those_of_the_teachers_views_and_give_the_pixel_path(stages, tiny_benchmark):
    args, teachers, caches, joint = stages
    torch.manual_seed(0)
    student = MlfdClassifierModel(student_config(args, tiny_benchmark, joint, 0)).eval()
    dataset = student_training_set(args, tiny_benchmark, joint, caches, 0, student)
    assert len(dataset) == 16 * 2
    # The views, rebuilt here from their definition: resize 36, random crop 32, flip, in [0, 1], under each
    # view's seed.
    view = ImageTransform(32, (0, 0, 0), (1, 1, 1), train=True, resize_size=36)
    student_norm = PixelNormalize(args.image_mean, args.image_std)
    images = tiny_benchmark.domains[DOMAINS[0]]["train"]
    exported = student.export_embedder()
    for row in (0, 1, 7, 30):
        image, number = dataset.source_index[row], dataset.view[row]
        assert (image, number) == (row // 2, row % 2)
        pixels = transform_view(view, images[image]["image"], view_seed(SEED, image, number))[None]
        item = dataset[row]
        with torch.no_grad():
            for name, teacher in teachers.items():
                normalize = PixelNormalize(teacher.config.image_mean, teacher.config.image_std)
                expected = teacher.feature_maps(normalize(pixels))[0][0]
                torch.testing.assert_close(item[map_column(name)], expected, rtol=1e-5, atol=1e-5)
            inputs = student_norm(pixels)
            trunk = trunk_forward(student.backbone, inputs, 3)
            # The cached row is this view's trunk up to float32 rounding of a batch of 32 against one image,
            # while the image's other view is far from it: the maps do tell the views apart.
            torch.testing.assert_close(item["trunk_maps"], trunk[0], rtol=1e-4, atol=1e-4)
            assert (dataset[row ^ 1]["trunk_maps"] - trunk[0]).abs().max() > 1e-2
            over_trunk = student(trunk_maps=trunk, output_feature_maps=True)
            from_cache = student(trunk_maps=item["trunk_maps"][None])
            from_pixels = student(pixel_values=inputs, output_feature_maps=True)
            embedding = exported(pixel_values=inputs).embeddings
        torch.testing.assert_close(over_trunk.logits, from_pixels.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_cache.logits, from_pixels.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            over_trunk.distill_maps[0], from_pixels.distill_maps[0], rtol=1e-5, atol=1e-5
        )
        # The shipped student takes pixels and gives the embedding the cached path trained.
        torch.testing.assert_close(
            embedding, F.normalize(over_trunk.pooled_features, dim=-1), rtol=1e-5, atol=1e-5
        )
    assert not any(p.requires_grad for p in student.backbone.blocks[:3].parameters())
    assert not any(p.requires_grad for p in student.backbone.conv_stem.parameters())
    assert all(p.requires_grad for p in student.backbone.blocks[3:].parameters())


def test_a_cut_that_freezes_a_distilled_level_is_refused(stages, tiny_benchmark):
    args, _, _, joint = stages
    # Lite0's levels end after blocks 0, 1, 2, 4, 6: trainable_from=5 leaves level -2 (block 4) in the trunk.
    refused = _arguments(args.output_dir, trainable_from=5, student_levels=[-2, -1], joint_fusion_levels=1)
    with pytest.raises(ValueError, match=r"trainable_from=5 would freeze distilled feature level -2"):
        MlfdClassifierModel(student_config(refused, tiny_benchmark, joint, 0))
    with pytest.raises(ValueError, match="trainable_from=4 would freeze distilled feature level -3"):
        MlfdClassifierModel(
            student_config(
                _arguments(args.output_dir, trainable_from=4, student_levels=[-3, -1]),
                tiny_benchmark,
                joint,
                0,
            )
        )
    with pytest.raises(ValueError, match="trainable_from must be a block index"):
        _arguments(args.output_dir, trainable_from=-1)
    # The recipe takes the argument (it used to refuse it).
    assert MlfdRecipe(_arguments(args.output_dir)).recipe.trainable_from == 3


def test_stage4_over_the_trunk_trains_the_top_only_and_exports_a_pixel_student(stages, tiny_benchmark):
    args, _, caches, joint = stages
    torch.manual_seed(args.seed)
    initial = MlfdClassifierModel(student_config(args, tiny_benchmark, joint, 0))
    results = stage4_students(args, tiny_benchmark, joint, caches)
    assert set(results) == set(DOMAINS)
    trained = MlfdClassifierModel.from_pretrained(f"{args.output_dir}/students/{DOMAINS[0]}")
    before, after = initial.backbone.state_dict(), trained.backbone.state_dict()
    frozen = [
        name
        for name in before
        if name.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2."))
    ]
    top = [name for name in before if name.startswith("blocks.6.") and before[name].is_floating_point()]
    assert frozen and top
    assert all(torch.equal(before[name], after[name]) for name in frozen)
    assert any(not torch.equal(before[name], after[name]) for name in top)
    # The exported embedder is the trained backbone, on pixels.
    exported = AutoModel.from_pretrained(f"{args.output_dir}/students/{DOMAINS[0]}/embedder").eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = F.normalize(trained.eval()(pixel_values=pixels).pooled_features, dim=-1)
        torch.testing.assert_close(exported(pixel_values=pixels).embeddings, expected, rtol=1e-5, atol=1e-5)
