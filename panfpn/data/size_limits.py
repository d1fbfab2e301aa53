"""Image size constants, without torch: config checks import them (tools that never touch torch,
like tools/merge.py on the CPU, check their config without its start-up)."""

SIZE_DIVISIBILITY = 32  # batches are padded to this multiple: the FPN's coarsest stride (P5)
MIN_SIZE = 96   # export: P6 (stride 64) must be >= 2 pixels for the traced shapes to stay symbolic
MAX_SIZE = 4096  # export: largest input side
