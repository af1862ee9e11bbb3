"""Running a sweep: the driver (``driver``) starts Ray (its environment ``ray_env``, its
processes ``ray_process``) and Ray Tune (``ray_tune``), whose workers train trials or fused
populations (``trainable``, ``fused``) on a report and checkpoint clock (``cadence``); each
event goes to the folder's record, MLflow and the live view (``recorder``); the chosen config
is retrained (``refit``); a stop signal ends it at a safe point (``stopping``);
tests hold it at named points (``hold``)."""
