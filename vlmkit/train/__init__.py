"""Training: ``train(config, data=..., out=...)`` runs a recipe end to end (see ``vlmkit.train.loop``)."""
from vlmkit.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
