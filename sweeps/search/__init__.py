"""How configurations are chosen: drawn from the space (``draws``) and stopped early at ASHA's
rungs (``asha``), the same rule for a Ray trial and for a fused population's members."""
