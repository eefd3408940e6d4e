"""The distance kernels' precision constants, shared by the torch tiles, the Triton kernels and the CPU sgemm
tiles (``pair_gemm``).

|x|^2 + |y|^2 - 2 x.y cancels when x and y are close. Pairs with d^2 < NEAR * (|x|^2 + |y|^2) are recomputed as
sum_k (x_k - y_k)^2, which keeps the distance's absolute error near float32 round-off of the coordinates (~1e-7
of the norms) down to near-duplicates. A concentrated column block (|mean|^2 > CONCENTRATED * mean |y|^2) is
first centred on its mean, so |x|^2 + |y|^2 shrinks to the spread of the data and tight data stays fast.
"""
NEAR = 1e-2
NEAR_PAIRS = 1 << 16  # near pairs recomputed per step in the torch tiles (memory: NEAR_PAIRS x d floats)
CONCENTRATED = 0.25   # centre a column block when |mean|^2 exceeds this share of its mean squared norm
