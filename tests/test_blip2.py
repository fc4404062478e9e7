"""The BLIP-2 captioning path, on a tiny random BLIP-2 saved with ``save_pretrained`` and loaded
back through ``load_captioner`` (no weights are downloaded)."""

import dataclasses
import json
import re

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from mmpd_core.data import blip2
from mmpd_core.data.shapes import CATEGORIES

WORDS = (
    "a an the chair table lamp with four legs tall small red blue wooden of on back seat".split()
)
QUERIES = 4  # Q-Former query tokens = <image> tokens in front of every prompt
SPECIALS = {"<pad>": 0, "</s>": 1, "<unk>": 2}  # OPT's roles; "</s>" is both BOS and EOS
# Random weights seldom pick "</s>"; generation also stops at "<unk>", which they often pick, so
# captions end early and a list of EOS ids is exercised.
STOP_IDS = [SPECIALS["</s>"], SPECIALS["<unk>"]]


def tiny_processor() -> Blip2Processor:
    """A word-level tokenizer that prepends BOS like OPT's, and a 32-pixel image processor."""
    vocab = {**SPECIALS, **{w: i + len(SPECIALS) for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", special_tokens=[("</s>", SPECIALS["</s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    images = BlipImageProcessor(size={"height": 32, "width": 32})
    return Blip2Processor(images, fast, num_query_tokens=QUERIES)  # adds the "<image>" token


def tiny_config(vocab_size: int, image_token_index: int) -> Blip2Config:
    """One layer everywhere, width 32; inits wide enough that captions vary with the image and
    often stop early (at EOS)."""
    width = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = OPTConfig(
        vocab_size=vocab_size, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64, init_std=0.5,
        pad_token_id=SPECIALS["<pad>"], bos_token_id=SPECIALS["</s>"],
        eos_token_id=SPECIALS["</s>"],
    )  # fmt: skip
    return Blip2Config(
        vision_config=dict(**width, image_size=32, patch_size=8, initializer_range=0.02),
        qformer_config=dict(
            **width, vocab_size=vocab_size, max_position_embeddings=32, initializer_range=0.2
        ),
        text_config=text.to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=image_token_index,
        initializer_range=0.2,
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    processor = tiny_processor()
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    model = Blip2ForConditionalGeneration(tiny_config(len(processor.tokenizer), image_token))
    model.generation_config.eos_token_id = STOP_IDS
    path = tmp_path_factory.mktemp("blip2")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def captioner(tiny_dir):
    return blip2.load_captioner(tiny_dir)


def views(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 40, 40) floats in [0, 1] on the uint8 grid, brightness varying by view."""
    gen = torch.Generator().manual_seed(seed)
    gamma = torch.linspace(0.2, 5.0, n).view(n, 1, 1, 1)
    return (torch.rand(n, 3, 40, 40, generator=gen) ** gamma * 255).round() / 255


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray((v * 255).round().byte().permute(1, 2, 0).numpy()) for v in images]


def teacher_forced_mean_logp(captioner, image: torch.Tensor, num_beams: int) -> float:
    """Generate for one image, then score the result with a plain forward pass."""
    pixels = (image * 255).round().byte()  # what a PNG of the view holds
    model, batch = captioner.model, captioner.processor(images=[pixels], return_tensors="pt")
    with torch.inference_mode():
        kwargs = dict(max_new_tokens=6, min_new_tokens=1, num_beams=num_beams, do_sample=False)
        kwargs["suppress_tokens"] = [model.config.image_token_index]  # as blip2 does
        seq = model.generate(**batch, **kwargs)  # (1, QUERIES + 1 + T)
        logits = model(pixel_values=batch.pixel_values, input_ids=seq).logits  # (1, L, vocab)
    start = QUERIES + 1  # after the image tokens and BOS
    logp = logits[0, start - 1 : -1].log_softmax(-1)  # (T, vocab): predicts seq[start:]
    token_logp = logp.gather(1, seq[0, start:, None])[:, 0]  # (T,)
    eos = torch.isin(seq[0, start:], torch.tensor(STOP_IDS)).nonzero()
    length = int(eos[0]) + 1 if len(eos) else len(token_logp)
    return token_logp[:length].mean().item()


def test_load_captioner_reads_the_local_directory_frozen(captioner):
    assert isinstance(captioner.model, Blip2ForConditionalGeneration)
    assert not captioner.model.training
    assert not any(p.requires_grad for p in captioner.model.parameters())
    assert captioner.processor.num_query_tokens == QUERIES
    assert captioner.dtype == torch.float32 and captioner.device == torch.device("cpu")


def test_missing_or_empty_directory_is_named(tmp_path):
    absent = tmp_path / "absent"
    for arg in (absent, str(absent)):
        with pytest.raises(FileNotFoundError, match=re.escape(str(absent))):
            blip2.load_captioner(arg)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no config.json")):
        blip2.load_captioner(tmp_path)


def test_hub_id_passes_through_unchanged(tiny_dir):
    hub_id = "Salesforce/blip2-opt-2.7b"
    assert blip2._resolve_source(hub_id, None) == (hub_id, False)
    assert blip2._resolve_source(tiny_dir, None) == (str(tiny_dir), True)


def test_one_caption_string_per_image(captioner):
    captions = blip2.caption_images(captioner, views(6), max_new_tokens=6)
    assert len(captions) == 6
    assert all(isinstance(c, str) and c == c.strip() and c for c in captions)
    assert all(set(c.split()) <= set(WORDS) for c in captions)
    assert len(set(captions)) > 1  # the images matter
    assert blip2.caption_images(captioner, views(6), max_new_tokens=6, batch_size=4) == captions


def test_captions_are_deterministic(captioner, tiny_dir):
    reloaded = blip2.load_captioner(tiny_dir)
    runs = [blip2.caption_images(c, views(4, seed=3), max_new_tokens=6) for c in (captioner,) * 2]
    runs.append(blip2.caption_images(reloaded, views(4, seed=3), max_new_tokens=6))
    assert runs[0] == runs[1] == runs[2]


def test_bfloat16_as_in_the_paper_profile(tiny_dir):
    captioner = blip2.load_captioner(tiny_dir, dtype=torch.bfloat16)
    assert captioner.model.language_model.dtype == torch.bfloat16
    captions = blip2.caption_images(captioner, views(3), max_new_tokens=4)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_float_tensor_and_pil_inputs_agree(captioner):
    images = views(5, seed=1)
    from_tensor = blip2.caption_images(captioner, images, max_new_tokens=6)
    assert blip2.caption_images(captioner, to_pil(images), max_new_tokens=6) == from_tensor
    assert blip2.caption_images(captioner, list(images), max_new_tokens=6) == from_tensor


def test_prompt_is_not_part_of_the_caption(captioner):
    captions = blip2.caption_images(captioner, views(3), prompt="a photo of", max_new_tokens=2)
    assert len(captions) == 3 and all(1 <= len(c.split()) <= 2 for c in captions)


def test_bad_image_shape_is_rejected(captioner):
    with pytest.raises(ValueError, match=r"\(V, 3, H, W\)"):
        blip2.caption_images(captioner, torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_score_is_the_mean_token_log_likelihood(captioner, num_beams):
    images = views(3, seed=2)
    kwargs = dict(max_new_tokens=6, min_new_tokens=1, num_beams=num_beams)
    _, batched = blip2._caption_batch(captioner, list(images), None, kwargs)
    expected = [teacher_forced_mean_logp(captioner, image, num_beams) for image in images]
    torch.testing.assert_close(batched, torch.tensor(expected), atol=1e-4, rtol=0)


def test_top_k_captions_per_shape(captioner):
    shapes = [views(5, seed=1), views(2, seed=2), views(4, seed=3)]
    ranked = blip2.caption_shapes(captioner, shapes, top_k=2, max_new_tokens=6, batch_size=3)
    assert len(ranked) == 3
    for shape, captions in zip(shapes, ranked, strict=True):
        per_view = blip2.caption_images(captioner, shape, max_new_tokens=6)
        assert 1 <= len(captions) <= 2 and len(set(captions)) == len(captions)
        assert all(c and c in per_view for c in captions)
    everything = blip2.caption_shapes(captioner, shapes, top_k=10, max_new_tokens=6, progress=False)
    for shape, captions in zip(shapes, everything, strict=True):
        assert set(captions) == set(blip2.caption_images(captioner, shape, max_new_tokens=6))


def test_rank_captions_by_votes_then_mean_score():
    captions = ["a chair", "a table", " a  chair ", "", "a lamp", "a table", "a stool"]
    scores = [-0.4, -0.5, -3.0, 0.0, -0.2, -1.5, -0.2]
    # chair: 2 views, mean -1.7 (best single -0.4); table: 2 views, mean -1.0;
    # lamp and stool: 1 view each, -0.2, lamp seen first; "" is dropped
    assert blip2.rank_captions(captions, scores, 3) == ["a table", "a chair", "a lamp"]
    assert blip2.rank_captions(captions, scores, 10) == ["a table", "a chair", "a lamp", "a stool"]
    assert blip2.rank_captions(["", " "], [0.0, 0.0], 2) == []
    with pytest.raises(ValueError, match="top_k"):
        blip2.rank_captions(captions, scores, 0)
    with pytest.raises(ValueError):
        blip2.rank_captions(captions, scores[:-1], 2)


def test_data_prep_selects_blip2(tiny_dir, tmp_path):
    from test_prep import tiny_config as prep_config

    from mmpd_core.data import prep

    cfg = prep_config(tmp_path, captioner="blip2", blip2_model=str(tiny_dir))  # offline dir
    manifest = prep.run_stage(cfg)
    texts = prep.json.loads(prep.resolve(manifest["captions"]).read_text())
    assert len(texts) == 2 * len(CATEGORIES) and all(1 <= len(v) <= 2 for v in texts.values())
    # template captions always name the category; the tiny model's mostly cannot
    from_blip2 = [n for n, v in texts.items() if all(n.split("-")[0] not in c for c in v)]
    assert len(from_blip2) > 10
    assert manifest["config"]["captioner"] == "blip2"


def test_rank_by_clip_keeps_each_views_best_candidate_then_ranks_the_views():
    candidates = [["a chair", "a red chair", ""], ["a table", "a red chair", "a lamp"]]
    scores = torch.tensor([[0.1, 0.3, 0.9], [0.2, 0.25, 0.5]])  # the empty one never wins
    assert blip2.rank_by_clip(candidates, scores, 5) == ["a lamp", "a red chair"]
    assert blip2.rank_by_clip(candidates, scores, 1) == ["a lamp"]
    with pytest.raises(ValueError, match="top_k"):
        blip2.rank_by_clip(candidates, scores, 0)


def test_clip_selection_scores_every_beam_of_every_view(captioner, tmp_path):
    from test_teachers import save_tiny_clip_dir

    from mmpd_core.teachers import build_teacher

    scorer = build_teacher(
        {"name": "c", "type": "open_clip", "model": save_tiny_clip_dir(tmp_path)}
    )
    shapes = [views(3, seed=1), views(2, seed=2)]
    out = blip2.caption_shapes(
        captioner, shapes, top_k=2, max_new_tokens=6, num_beams=2, progress=False,
        selection="clip", candidates=3, scorer=scorer,
    )  # fmt: skip
    assert [len(r) for r in out] == [min(2, len(r)) for r in out] and all(out)
    for shape, ranked in zip(shapes, out, strict=True):  # by hand: beams, scores, ranking
        texts = blip2.caption_images(
            captioner, shape, max_new_tokens=6, num_beams=3, num_return_sequences=3
        )
        rows = [texts[i * 3 : (i + 1) * 3] for i in range(len(shape))]
        expected = blip2.rank_by_clip(rows, blip2.clip_scores(scorer, list(shape), rows), 2)
        assert ranked == expected
    with pytest.raises(ValueError, match="scorer"):
        blip2.caption_shapes(captioner, shapes, selection="clip", candidates=2)


def test_captioning_is_sharded_and_resumes_where_it_stopped(tiny_dir, tmp_path, monkeypatch):
    from test_prep import tiny_config as prep_config

    from mmpd_core.data import captioning, prep

    cfg = prep_config(tmp_path, captioner="blip2", blip2_model=str(tiny_dir))
    cfg = dataclasses.replace(cfg, caption_cache=str(tmp_path / "captions"))
    manifest = prep.run_stage(cfg)  # every shape captioned, logged by rank 0 of 1
    names = list(json.loads(prep.resolve(manifest["captions"]).read_text()))
    renders = prep.resolve(manifest["renders"])
    degrees = manifest["views_degrees"]
    folder = next((tmp_path / "captions").iterdir())
    assert captioning.merge(folder, names).keys() == set(names)
    fresh = tmp_path / "again"  # two ranks, the second killed after one batch, then resumed
    calls, real = [], blip2.caption_shapes

    def dies_after_one_batch(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    assert captioning.caption_shard(cfg, renders, names, degrees, fresh, rank=0, world_size=2)
    monkeypatch.setattr(blip2, "caption_shapes", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        captioning.caption_shard(cfg, renders, names, degrees, fresh, rank=1, world_size=2)
    monkeypatch.setattr(blip2, "caption_shapes", real)
    with pytest.raises(RuntimeError, match="no captions yet for"):
        captioning.merge(fresh, names)
    before = captioning.read_logs(fresh)
    left = len(names[1::2]) - captioning.SHAPES_PER_BATCH
    assert captioning.caption_shard(cfg, renders, names, degrees, fresh) == left  # the rest only
    merged = captioning.merge(fresh, names)
    assert list(merged) == names and all(merged.values())
    assert all(merged[n] == c for n, c in before.items())  # logged work is kept, not redone
    assert len(list(fresh.glob("part-*.jsonl"))) == 3  # 0of2, 1of2, then 0of1
