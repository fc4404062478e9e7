import json
from pathlib import Path

import pytest
import torch
from test_prep import tiny_config

from mmpd_core import config
from mmpd_core.data import prep, readers
from mmpd_core.data.captions import display_name
from mmpd_core.data.shapes import CATEGORIES
from mmpd_core.models import create_model
from mmpd_core.stage1 import Stage1Model, Stage1Step
from mmpd_core.teachers.cache import TargetSource, TeacherCache, build_cache


class FakeImageTeacher:
    """Mean colour and a few pixel statistics: deterministic, cheap, image-dependent."""

    modality, dim = "image", 8

    def __init__(self, name="img", version=1):
        self.name, self.version, self.calls = name, version, 0

    def encode_images(self, images):
        self.calls += 1
        flat = images.flatten(2)  # (B, 3, HW)
        return torch.cat([flat.mean(-1), flat.std(-1), flat.amin(-1)[:, :2]], dim=1) * self.version

    def fingerprint(self):
        return {"id": self.name, "version": self.version}


class FakeTextTeacher:
    modality, dim, name = "text", 5, "txt"

    def encode_texts(self, texts):
        return torch.tensor([[len(t), t.count("a"), t.count(" "), hash(t) % 7, 1.0] for t in texts])

    def fingerprint(self):
        return {"id": "txt"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tc")
    manifest = prep.run_stage(tiny_config(tmp, render_views=3))
    return tmp, manifest


def test_cache_shapes_reuse_and_invalidation(data, tmp_path):
    _, manifest = data
    image, text = FakeImageTeacher(), FakeTextTeacher()
    cache_manifest = build_cache(
        [image, text], manifest, tmp_path, batch_size=7, dtype=torch.float32
    )
    shapes = 2 * len(CATEGORIES)  # tiny_config: one train and one test shape per category
    assert cache_manifest["teachers"]["img"]["shape"] == [shapes, 3, 2, 8]
    assert cache_manifest["teachers"]["txt"]["shape"] == [shapes, 2, 5]
    calls, written = image.calls, (tmp_path / "manifest.json").read_bytes()
    again = build_cache([image, text], manifest, tmp_path, batch_size=7, dtype=torch.float32)
    assert image.calls == calls  # same teacher, same data: nothing recomputed
    assert again["timings_s"] == {"img": 0.0, "txt": 0.0} and b"timings_s" not in written
    assert (tmp_path / "manifest.json").read_bytes() == written  # DVC sees the same output
    build_cache([FakeImageTeacher(version=2)], manifest, tmp_path, dtype=torch.float32)
    cache = TeacherCache(tmp_path)
    first = cache.tensors["img"]["features"]
    assert first.abs().sum() > 0
    changed = dict(manifest, content_sha256="other data")
    again = FakeImageTeacher(version=2)
    build_cache([again], changed, tmp_path, dtype=torch.float32)
    assert again.calls > 0  # new data hash: recomputed
    with pytest.raises(KeyError, match="no cached features"):
        TeacherCache(tmp_path, ["dinov2"])


def test_cached_and_online_targets_agree(data, tmp_path):
    _, manifest = data
    teachers = [FakeImageTeacher(), FakeTextTeacher()]
    build_cache(teachers, manifest, tmp_path, dtype=torch.float32)
    cached = TargetSource.from_cache(TeacherCache(tmp_path))
    online = TargetSource.online(teachers, manifest)
    assert cached.names == online.names and cached.dims == online.dims
    idx = torch.tensor([0, 5, 17, 39])
    a = cached.draw(idx, torch.Generator().manual_seed(3))
    b = online.draw(idx, torch.Generator().manual_seed(3))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    fixed = cached.fixed(idx)
    assert torch.allclose(fixed["img"], online.fixed(idx)["img"], atol=1e-5)
    for source in (cached, online):  # Table 2's "manual captions ✗" set, both ways
        source.use_captions("unnamed")
    a, b = cached.fixed(idx), online.fixed(idx)
    assert torch.allclose(a["txt"], b["txt"], atol=1e-5)
    assert torch.allclose(a["img"], fixed["img"])  # images do not depend on the captions
    assert not torch.allclose(a["txt"], fixed["txt"])  # other texts, other targets


def test_unnamed_captions_never_name_the_category(data):
    _, manifest = data
    named = json.loads(config.resolve(manifest["captions"]).read_text())
    unnamed = json.loads(config.resolve(manifest["captions_unnamed"]).read_text())
    assert list(named) == list(unnamed)
    for shape, texts in unnamed.items():
        category = readers.parse_shapenet_name(shape)[0]
        words = {display_name(category), category.replace("_", " ")}
        assert len(texts) == len(named[shape])
        for text, original in zip(texts, named[shape], strict=True):
            assert not any(w in text.lower() for w in words), text
            assert "object" in text and any(w in original.lower() for w in words), original


def test_stage1_step_learns_on_cached_targets(data, tmp_path):
    _, manifest = data
    build_cache([FakeImageTeacher(), FakeTextTeacher()], manifest, tmp_path, dtype=torch.float32)
    targets = TargetSource.from_cache(TeacherCache(tmp_path))
    torch.manual_seed(0)
    model = Stage1Model(
        create_model("point_mae_tiny", depth=1, num_groups=16, group_size=16), targets.dims
    )
    step = Stage1Step(targets)
    names = targets.names[:12]
    root = config.resolve(manifest["roots"]["shapenet55"])
    from mmpd_core.data.readers import read_shapenet55_points

    points = torch.stack([torch.from_numpy(read_shapenet55_points(root, n)[:256]) for n in names])
    batch = {"points": points, "name": names}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, metrics = step(model, batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(metrics) >= {"loss_img", "loss_txt", "batch_top1_img"}
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "manifest.json").read_text())["shapes"] == targets.names


def test_every_image_teacher_in_one_pass_decodes_each_view_once(data, tmp_path, monkeypatch):
    from mmpd_core.teachers import cache as cache_module

    _, manifest = data
    loads = []
    original = cache_module.load_view
    monkeypatch.setattr(
        cache_module, "load_view", lambda *a: loads.append(a) or original(*a)
    )  # counts every decoded image
    one, two = FakeImageTeacher("a"), FakeImageTeacher("b", version=3)
    build_cache([one, two], manifest, tmp_path / "both", batch_size=16, dtype=torch.float32)
    assert (
        len(loads) == 2 * len(CATEGORIES) * 3 * 2
    )  # shapes x views x (RGB, depth): once, not once per teacher
    alone = build_cache([FakeImageTeacher("a")], manifest, tmp_path / "a", dtype=torch.float32)
    assert (
        alone["teachers"]["a"]["file_sha256"]
        == json.loads((tmp_path / "both/manifest.json").read_text())["teachers"]["a"]["file_sha256"]
    )  # the same features as a pass of its own
    workers = build_cache(
        [FakeImageTeacher("a")], manifest, tmp_path / "w", dtype=torch.float32, num_workers=2
    )
    assert workers["teachers"]["a"]["file_sha256"] == alone["teachers"]["a"]["file_sha256"]


def test_the_cache_is_memory_mapped_not_copied(data, tmp_path):
    from safetensors.torch import load_file

    from mmpd_core.teachers.cache import mmap_safetensors

    _, manifest = data
    build_cache([FakeImageTeacher(), FakeTextTeacher()], manifest, tmp_path, dtype=torch.float16)
    for name in ("img", "txt"):
        path = tmp_path / f"{name}.safetensors"
        mapped, loaded = mmap_safetensors(path), load_file(path)
        assert set(mapped) == set(loaded)
        for key, value in loaded.items():
            assert mapped[key].dtype == value.dtype and torch.equal(mapped[key], value)
    cache = TeacherCache(tmp_path)
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the file is mapped into this process, not read into a copy
        assert str(tmp_path / "img.safetensors") in maps.read_text()
    assert cache.tensors["img"]["features"].shape == (2 * len(CATEGORIES), 3, 2, 8)


def test_top1_caption_setting_draws_only_each_shapes_first_caption(data, tmp_path):
    _, manifest = data
    teachers = [FakeImageTeacher(), FakeTextTeacher()]
    build_cache(teachers, manifest, tmp_path, dtype=torch.float32)
    for source in (
        TargetSource.from_cache(TeacherCache(tmp_path)),
        TargetSource.online(teachers, manifest),
    ):
        idx = torch.arange(40)
        drawn = source.draw(idx, torch.Generator().manual_seed(1))["txt"]
        assert not torch.allclose(drawn, source.fixed(idx)["txt"])  # any of two captions
        source.caption_top_k = 1
        drawn = source.draw(idx, torch.Generator().manual_seed(1))["txt"]
        torch.testing.assert_close(drawn, source.fixed(idx)["txt"])  # always the first
