"""Running a sweep: the driver (``driver``) starts Ray (``ray_env``) and Ray Tune
(``ray_tune``), whose workers train trials or fused populations (``trainable``, ``fused``) on
a report and checkpoint clock (``cadence``); the chosen config is retrained (``refit``); a stop
signal ends it at a safe point (``stopping``); tests hold it at named points (``hold``)."""
