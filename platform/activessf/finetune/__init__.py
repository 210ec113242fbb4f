"""Fine-tuning: classifiers from pretrained encoders or timm backbones, layer-wise lr decay (pure PyTorch)."""
