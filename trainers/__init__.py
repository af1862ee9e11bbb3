"""Pure PyTorch trainer for linear classifiers (softmax or multiclass hinge).

Never imports Ray or MLflow, so it runs anywhere torch does (a GPU node, a notebook).
"""

from trainers.config import ConfigError, TrialConfig, trial_config
from trainers.loop import Trial, evaluate

__all__ = ["ConfigError", "Trial", "TrialConfig", "evaluate", "trial_config"]
