"""models: every learned weight — embedders, the shared trunk, heads."""

from .attention import Attention, KVCache, build_mask
from .blocks import MLP, Block, Stack
from .config import HeadConfig, ModalityConfig, ModelConfig, TrunkConfig
from .embedders import TokenEmbedder, TypedEmbedder, build_embedder
from .heads import LMHead, PooledHead, TokenHead
from .convert import dt_model_config, gpt2_model_config, is_hf_whisper_folder, load_hf_whisper_folder, load_hf_decision_transformer, load_openai_whisper, load_gpt2, load_hf_whisper, load_timm_vit, vit_model_config, whisper_model_config
from .export import gpt2_export, openai_whisper_export, timm_vit_export, whisper_export
from .safe_load import UnsafeCheckpointError, load_torch_file
from .transformer import GNMTPenalty, Memory, MultimodalTransformer, Output, length_normalised, load_weights
from .grow import freeze_trained, grow

__all__ = [
    "MLP", "Attention", "Block", "GNMTPenalty", "HeadConfig", "KVCache", "LMHead", "ModalityConfig", "ModelConfig",
    "Memory", "MultimodalTransformer", "Output", "PooledHead", "Stack", "TokenEmbedder", "TokenHead", "TrunkConfig", "TypedEmbedder", "UnsafeCheckpointError", "build_embedder",
    "build_mask", "dt_model_config", "freeze_trained", "grow", "gpt2_export", "gpt2_model_config", "is_hf_whisper_folder", "length_normalised", "load_hf_whisper_folder", "load_hf_decision_transformer", "load_openai_whisper", "load_torch_file", "load_gpt2", "load_hf_whisper", "load_timm_vit", "load_weights", "openai_whisper_export", "timm_vit_export", "vit_model_config", "whisper_export", "whisper_model_config",
]
