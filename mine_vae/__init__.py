"""mine-vae: text variational autoencoders with a mutual-information critic, native to Hugging Face transformers."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_mine_vae import MineVaeConfig
from .critic import MineCritic, mi_lower_bound
from .hub import push_to_hub
from .modeling_mine_vae import MineVaeModel, MineVaeOutput, MineVaePosterior, MineVaePreTrainedModel
from .processing_mine_vae import MineVaeDataCollator, MineVaeProcessor
from .trainer import MineVaeTrainer
from .training_args import MineVaeTrainingArguments

__version__ = "0.1.0"

AutoConfig.register(MineVaeConfig.model_type, MineVaeConfig, exist_ok=True)
AutoModel.register(MineVaeConfig, MineVaeModel, exist_ok=True)
# AutoProcessor finds the class named in processor_config.json among the registered processors, and for a model folder
# without that file (written by mine_vae before it) it picks the processor registered for config.json's model type.
AutoProcessor.register(MineVaeConfig, MineVaeProcessor, exist_ok=True)
# save_pretrained copies the modelling files and writes `auto_map`, so the folder loads with trust_remote_code alone.
MineVaeConfig.register_for_auto_class()
MineVaeModel.register_for_auto_class("AutoModel")
# model.push_to_hub also uploads the processor and a MINE-VAE model card (the model file cannot import the hub code).
MineVaeModel.hub_push = push_to_hub

__all__ = [
    "MineCritic",
    "MineVaeConfig",
    "MineVaeDataCollator",
    "MineVaeModel",
    "MineVaeOutput",
    "MineVaePosterior",
    "MineVaePreTrainedModel",
    "MineVaeProcessor",
    "MineVaeTrainer",
    "MineVaeTrainingArguments",
    "__version__",
    "mi_lower_bound",
]
