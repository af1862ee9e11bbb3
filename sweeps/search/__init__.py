"""How configurations are chosen: drawn from the space (``draws``), stopped early at ASHA's
rungs (``asha``), drawn by Optuna's TPE from the results so far (``tpe``: tpe and bohb), and
exploited and explored by Population Based Training (``pbt``); each written once for both
engines, Ray's trials and a fused population's members."""
