"""PEFT LoRA on the embedder's timm ViT backbone: adapters save, reload and merge into a plain embedder."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel

from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

CONFIG = dict(
    backbone="vit_tiny_patch16_224", backbone_kwargs=dict(img_size=32, patch_size=8, depth=2), image_size=32
)


def base_model() -> UniversalEmbedderModel:
    torch.manual_seed(0)
    return UniversalEmbedderModel(UniversalEmbedderConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_lora_adapters_save_reload_and_merge(tmp_path, pixels):
    reference = base_model()
    with torch.no_grad():
        base_output = reference(pixels).embeddings
    # init_lora_weights=False gives non-zero B matrices, so the adapter changes the function from the start.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], init_lora_weights=False)
    peft_model = get_peft_model(base_model(), lora).eval()
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and ".qkv." in name for name in trainable)
    with torch.no_grad():
        adapted = peft_model(pixel_values=pixels).embeddings
    assert (adapted - base_output).abs().max() > 1e-3

    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(base_model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).embeddings, adapted, rtol=0, atol=1e-6)

    merged = reloaded.merge_and_unload()
    assert type(merged) is UniversalEmbedderModel
    assert not [name for name, _ in merged.named_parameters() if "lora_" in name]
    with torch.no_grad():
        torch.testing.assert_close(merged(pixels).embeddings, adapted, rtol=0, atol=1e-5)

    merged.save_pretrained(tmp_path / "merged")
    plain = AutoModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(pixels).embeddings, adapted, rtol=0, atol=1e-5)
