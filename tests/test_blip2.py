"""The BLIP-2 captioning path, on a tiny random BLIP-2 saved to disk and loaded back."""

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from mmpd_core import blip2

WORDS = (
    "a an the chair table lamp with four legs tall small red blue wooden of on back seat".split()
)


def tiny_processor() -> Blip2Processor:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    images = BlipImageProcessor(size={"height": 32, "width": 32})
    return Blip2Processor(images, fast, num_query_tokens=4)  # adds the <image> token


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    processor = tiny_processor()
    vocab = len(processor.tokenizer)
    text = OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=vocab,
        word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=1,
    )  # fmt: skip
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, encoder_hidden_size=32, vocab_size=vocab),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("blip2")
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def views(n=3, seed=0):
    return torch.rand(n, 3, 40, 40, generator=torch.Generator().manual_seed(seed))


def test_captions_from_a_local_directory(tiny_dir):
    captioner = blip2.load_captioner(tiny_dir)
    texts, scores = blip2.caption_images(captioner, views(), max_new_tokens=5, min_new_tokens=3)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert all(set(t.split()) <= set(WORDS) for t in texts)
    assert all(s <= 0 for s in scores)  # mean log-probabilities
    again, _ = blip2.caption_images(captioner, views(), max_new_tokens=5, min_new_tokens=3)
    assert again == texts
    pil = [Image.fromarray((v * 255).round().byte().permute(1, 2, 0).numpy()) for v in views()]
    assert blip2.caption_images(captioner, pil, max_new_tokens=5, min_new_tokens=3)[0] == texts


def test_top_k_per_shape(tiny_dir):
    captioner = blip2.load_captioner(tiny_dir)
    ranked = blip2.caption_shapes(captioner, [views(4, 1), views(2, 2)], top_k=2,
                                  max_new_tokens=4, min_new_tokens=2)  # fmt: skip
    assert len(ranked) == 2
    for captions in ranked:
        assert 1 <= len(captions) <= 2 and len(set(captions)) == len(captions) and all(captions)


def test_rank_captions_by_votes_then_score():
    captions = ["a chair", "a table", "a chair", "", "a lamp", "a table ", "a stool"]
    scores = [-1.0, -0.5, -3.0, 0.0, -0.1, -0.5, -0.1]
    # votes: chair 2 (mean -2.0), table 2 (mean -0.5), lamp 1 (-0.1), stool 1 (-0.1, seen later)
    assert blip2.rank_captions(captions, scores, 3) == ["a table", "a chair", "a lamp"]
    assert blip2.rank_captions(captions, scores, 10)[-1] == "a stool"
    assert blip2.rank_captions(["", " "], [0.0, 0.0], 2) == []


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        blip2.load_captioner(tmp_path / "absent")


def test_data_prep_selects_blip2(tiny_dir, tmp_path):
    from test_prep import tiny_config

    from mmpd_core.data import prep

    cfg = tiny_config(tmp_path, captioner="blip2", blip2_model=str(tiny_dir))  # offline dir
    manifest = prep.prepare(cfg)
    texts = prep.json.loads(prep.resolve(manifest["captions"]).read_text())
    assert len(texts) == 40 and all(1 <= len(v) <= 2 for v in texts.values())
    # template captions always name the category; the tiny model's mostly cannot
    from_blip2 = [n for n, v in texts.items() if all(n.split("-")[0] not in c for c in v)]
    assert len(from_blip2) > 10
    assert manifest["config"]["captioner"] == "blip2"
