"""The offline zoo maps packaged ImageNet weights into timm architectures correctly."""

import pytest
import timm
import torch
import torchvision
from skimage import data as skdata
from timm.data import ImageNetInfo
from torchvision.transforms import v2

from core import zoo
from core.errors import FtlError
from core.models import build_model


def imagenet_model(tag: str) -> torch.nn.Module:
    """The timm architecture with the offline weights, classifier included (1000 ImageNet classes)."""
    entry = zoo.OFFLINE_ZOO[tag]
    model = timm.create_model(entry.arch)
    sd = zoo.map_by_order(zoo.read_state_dict(zoo.offline_weight_file(entry)), model.state_dict(), tag)
    model.load_state_dict(sd)
    return model.eval()


def photo(name: str, model: torch.nn.Module) -> torch.Tensor:
    image = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1)
    cfg = model.pretrained_cfg
    t = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(cfg["mean"], cfg["std"])])  # fmt: skip
    return t(image).unsqueeze(0)


def test_mobilenetv2_logits_equal_torchvision():
    timm_model = imagenet_model("mobilenetv2_100.tv_in1k")
    tv_model = torchvision.models.mobilenet_v2()
    tv_model.load_state_dict(torch.load(zoo.offline_weight_file(zoo.OFFLINE_ZOO["mobilenetv2_100.tv_in1k"])))
    tv_model.eval()
    x = torch.cat([photo("chelsea", timm_model), torch.randn(3, 3, 224, 224)])
    with torch.no_grad():
        a, b = timm_model(x), tv_model(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()


@pytest.mark.parametrize("tag", sorted(zoo.OFFLINE_ZOO))
@pytest.mark.parametrize(("image", "words"), [("chelsea", ("cat",)), ("coffee", ("espresso", "cup", "coffee"))])
def test_offline_weights_recognise_photos(tag, image, words):
    model = imagenet_model(tag)
    with torch.no_grad():
        probs = model(photo(image, model)).softmax(-1)[0]
    top3 = [ImageNetInfo().index_to_description(i) for i in probs.topk(3).indices.tolist()]
    assert any(w in top3[0] for w in words), top3
    assert probs.max() > 0.3


def test_build_model_replaces_head_and_keeps_backbone():
    model, source = build_model("mobilenetv2_100", 7, "mobilenetv2_100.tv_in1k")
    ref = imagenet_model("mobilenetv2_100.tv_in1k")
    assert "mobilenetv2_100.tv_in1k" in source
    assert model.get_classifier().out_features == 7
    torch.testing.assert_close(model.conv_stem.weight, ref.conv_stem.weight, rtol=0, atol=0)


def test_mlp_head():
    model, _ = build_model("tf_efficientnet_lite0", 3, "tf_efficientnet_lite0.in1k", head="mlp", head_hidden=64,
                           head_dropout=0.2)  # fmt: skip
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert sum(p.numel() for p in model.classifier.parameters()) == 1280 * 64 + 64 + 64 * 3 + 3


def test_wrong_architecture_names_first_mismatching_key(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(FtlError, match=r"r18.pth: key 'conv1.weight' does not exist in mobilenetv2_100"):
        build_model("mobilenetv2_100", 2, str(tmp_path / "r18.pth"))
    torch.save(timm.create_model("mobilenetv2_050").state_dict(), tmp_path / "small.pth")
    with pytest.raises(FtlError, match=r"'conv_stem.weight' has shape \(16, 3, 3, 3\) but mobilenetv2_100 needs"):
        build_model("mobilenetv2_100", 2, str(tmp_path / "small.pth"))


def test_weight_file_roundtrip_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = imagenet_model("tf_efficientnet_lite0.in1k")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model, source = build_model("tf_efficientnet_lite0", 4, str(tmp_path / "w.safetensors"))
    assert "weight file" in source
    torch.testing.assert_close(model.conv_stem.weight, src.conv_stem.weight, rtol=0, atol=0)


def test_unknown_model_suggests_timm_names():
    with pytest.raises(FtlError, match=r"unknown timm model 'mobilenetv2_10'.*mobilenetv2_100"):
        build_model("mobilenetv2_10", 2)


def test_zoo_tag_for_other_architecture():
    with pytest.raises(FtlError, match="set model.name=mobilenetv2_100"):
        build_model("resnet18", 2, "mobilenetv2_100.tv_in1k")
