"""Pure PyTorch trainer for linear classifiers (softmax or multiclass hinge).

Never imports Ray or MLflow, so it runs anywhere torch does (a GPU node, a notebook). The
modules are imported where used (``trainers.loop.Trial``), so that reading a config stays
cheap on a login node.
"""
