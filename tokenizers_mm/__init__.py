"""tokenizers_mm: per-modality tokenizers that emit TokenSets (no learned weights)."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .audio import AudioError, AudioTokenizer, load_audio, log_mel_spectrogram, split_at_pauses, stream_audio
from .base import Tokenizer, load_tokenizer
from .collate import collate, collate_examples, pack, pack_examples, padding_fraction
from .registry import ENTRY_POINT_GROUP, create, get, list_tokenizers, register
from .image import ImageError, ImageTokenizer, open_image
from .text_bpe import PATTERNS, BPETokenizer
from .text_char import ENDOFTEXT, CharTokenizer
from .tokenset import ModalitySpec, TokenBatch, TokenSet, next_token_set
from .trajectory import TrajectoryTokenizer, gato_decode, gato_encode, returns_to_go

try:
    __version__ = _version("tokenizers-mm")
except PackageNotFoundError:  # (the source on PYTHONPATH, not installed: benchmarks/gpu_check.sh)
    __version__ = "0+unknown"

__all__ = [
    "AudioError", "AudioTokenizer", "BPETokenizer", "ENDOFTEXT", "ImageError", "ImageTokenizer", "ENTRY_POINT_GROUP", "PATTERNS", "CharTokenizer", "ModalitySpec", "TokenBatch", "TokenSet", "Tokenizer", "TrajectoryTokenizer", "gato_decode", "gato_encode", "returns_to_go", "split_at_pauses", "stream_audio",
    "collate", "collate_examples", "create", "get", "list_tokenizers", "load_audio", "load_tokenizer", "log_mel_spectrogram", "next_token_set", "open_image", "pack", "pack_examples", "padding_fraction",
    "register",
]
