"""The dog encoder: robust invariant terms -> canonical stack -> a 512-d standard-normal vector.

Modules: ``canonical`` (fixed-size stack from any fingerprint), ``synthetic`` (training data),
``stackstats`` (statistics matched between real and synthetic stacks), ``model`` (CNN and the
final calibration), ``train`` (deterministic CPU training), ``weights`` (shipped weights, hash
check). The Python API for dog images is :mod:`huref.dogs`.
"""
