"""Training: AdamW with selective decay, warm-up + cosine schedule, the distributed trainer and checkpoints."""

from tf_lm.configs import TrainConfig
from tf_lm.training.checkpoints import Checkpoints
from tf_lm.training.metrics import MetricsLog, measure_matmul_peak
from tf_lm.training.optimizer import make_optimizer, no_decay_variables
from tf_lm.training.schedule import WarmupCosine
from tf_lm.training.trainer import Trainer, TrainingDiverged, TrainingInterrupted, weights_digest

__all__ = [
    "Checkpoints",
    "MetricsLog",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "WarmupCosine",
    "make_optimizer",
    "measure_matmul_peak",
    "no_decay_variables",
    "weights_digest",
]
