"""Pallas kernels for dlopt: fused attention and fused convolution.

Each op will be a package with a plain `reference.py`, Pallas kernels per backend, validated
block sizes and a public function with an `impl=` switch (see DESIGN.md). The ops arrive with
their own issues; this package is the home they slot into and never imports `dlopt`.
"""

__all__: list[str] = []
