"""Networks, by name: `create_model(ModelConfig)`; see registry.py."""

from imgcls.models.registry import ModelConfig, create_model, list_models, two_logits

__all__ = ["ModelConfig", "create_model", "list_models", "two_logits"]
