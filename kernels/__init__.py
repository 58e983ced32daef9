"""Numba INT4/INT8 kernels (installed as `intq.kernels`).

Each kernel has the signature of its numpy reference op and is tested against it for
exact equality. Empty until the integer lowering lands.
"""
