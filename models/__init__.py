"""models: every learned weight — embedders, the shared trunk, heads."""

from .attention import Attention, KVCache, build_mask
from .blocks import MLP, Block, Stack
from .config import HeadConfig, ModalityConfig, ModelConfig, TrunkConfig
from .embedders import TokenEmbedder, build_embedder
from .heads import LMHead, PooledHead
from .convert import gpt2_model_config, load_gpt2, load_hf_whisper, load_timm_vit, vit_model_config, whisper_model_config
from .transformer import MultimodalTransformer, Output, load_weights

__all__ = [
    "MLP", "Attention", "Block", "HeadConfig", "KVCache", "LMHead", "ModalityConfig", "ModelConfig",
    "MultimodalTransformer", "Output", "PooledHead", "Stack", "TokenEmbedder", "TrunkConfig", "build_embedder",
    "build_mask", "gpt2_model_config", "load_gpt2", "load_hf_whisper", "load_timm_vit", "load_weights", "vit_model_config", "whisper_model_config",
]
